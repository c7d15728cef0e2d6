// jobset-tuned: JobSet's controller manager (sigs.k8s.io/jobset, the version in go.mod) set up
// as its own main.go sets it up, plus a worker count: --workers sets MaxConcurrentReconciles of
// every controller (upstream leaves controller-runtime's default, 1, and has no knob for it).
// The bench runs upstream's own binary for "defaults" and this one for "matched to kubetune".
package main

import (
	"flag"
	"os"

	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	configapi "sigs.k8s.io/jobset/api/config/v1alpha1"
	jobset "sigs.k8s.io/jobset/api/jobset/v1alpha2"
	"sigs.k8s.io/jobset/pkg/config"
	"sigs.k8s.io/jobset/pkg/controllers"
	"sigs.k8s.io/jobset/pkg/metrics"
	"sigs.k8s.io/jobset/pkg/util/cert"
	"sigs.k8s.io/jobset/pkg/util/useragent"
	"sigs.k8s.io/jobset/pkg/webhooks"
)

var setupLog = ctrl.Log.WithName("setup")

func must(err error, what string) {
	if err != nil {
		setupLog.Error(err, what)
		os.Exit(1)
	}
}

func main() {
	var configFile, metricsAddr, probeAddr string
	var qps float64
	var burst, workers int
	flag.StringVar(&configFile, "config", "", "JobSet's configuration file (config.jobset.x-k8s.io/v1alpha1)")
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "metrics address (plain HTTP; 0: none)")
	flag.StringVar(&probeAddr, "health-probe-bind-address", "0", "health probe address (0: none)")
	flag.Float64Var(&qps, "kube-api-qps", 0, "client QPS (0: the configuration's; negative: no client-side limit)")
	flag.IntVar(&burst, "kube-api-burst", 0, "client burst (0: the configuration's)")
	flag.IntVar(&workers, "workers", 0, "concurrent reconciles per controller (0: controller-runtime's default, 1)")
	opts := zap.Options{Development: true}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	scheme := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(jobset.AddToScheme(scheme))
	utilruntime.Must(configapi.AddToScheme(scheme))
	metrics.Register()

	kubeConfig := ctrl.GetConfigOrDie()
	if kubeConfig.UserAgent == "" {
		kubeConfig.UserAgent = useragent.Default()
	}
	options, cfg, err := config.Load(scheme, configFile)
	must(err, "unable to load the configuration")
	kubeConfig.QPS = *cfg.ClientConnection.QPS
	kubeConfig.Burst = int(*cfg.ClientConnection.Burst)
	if qps != 0 {
		kubeConfig.QPS = float32(qps)
	}
	if burst != 0 {
		kubeConfig.Burst = burst
	}
	options.LeaderElection = *cfg.LeaderElection.LeaderElect
	options.HealthProbeBindAddress = probeAddr
	options.Metrics = metricsserver.Options{BindAddress: metricsAddr}
	options.Controller.MaxConcurrentReconciles = workers
	mgr, err := ctrl.NewManager(kubeConfig, options)
	must(err, "unable to start manager")

	certsReady := make(chan struct{})
	if cfg.InternalCertManagement != nil && *cfg.InternalCertManagement.Enable {
		must(cert.CertsManager(mgr, cfg, certsReady), "unable to set up cert rotation")
	} else {
		close(certsReady)
	}
	ctx := ctrl.SetupSignalHandler()
	must(controllers.SetupJobSetIndexes(ctx, mgr.GetFieldIndexer()), "unable to set up jobset indexes")
	must(controllers.SetupPodIndexes(ctx, mgr.GetFieldIndexer()), "unable to set up pod indexes")
	go func() {
		<-certsReady
		must(controllers.NewJobSetReconciler(mgr.GetClient(), mgr.GetScheme(), mgr.GetEventRecorderFor("jobset")).
			SetupWithManager(mgr), "unable to create the JobSet controller")
		must(controllers.NewPodReconciler(mgr.GetClient(), mgr.GetScheme(), mgr.GetEventRecorderFor("pod")).
			SetupWithManager(mgr), "unable to create the Pod controller")
		jobSetWebhook, err := webhooks.NewJobSetWebhook(mgr.GetClient())
		must(err, "unable to create the JobSet webhook")
		must(jobSetWebhook.SetupWebhookWithManager(mgr), "unable to set up the JobSet webhook")
		must(webhooks.NewPodWebhook(mgr.GetClient()).SetupWebhookWithManager(mgr), "unable to set up the Pod webhook")
	}()
	must(mgr.AddHealthzCheck("healthz", healthz.Ping), "unable to set up health check")
	must(mgr.Start(ctx), "problem running manager")
}
