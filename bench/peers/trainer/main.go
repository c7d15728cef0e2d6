// trainer-tuned: Kubeflow Trainer's controller manager (github.com/kubeflow/trainer/v2, the
// version in go.mod) set up as its cmd/trainer-controller-manager sets it up, plus client rate
// limits and a worker count: --kube-api-qps/--kube-api-burst (upstream: controller-runtime's 20/30,
// no flag) and --workers, MaxConcurrentReconciles of every controller (upstream: 1, no flag).
// The bench runs upstream's own binary for "defaults" and this one for "matched to kubetune".
package main

import (
	"flag"
	"os"

	apiruntime "k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlconfig "sigs.k8s.io/controller-runtime/pkg/config"
	ctrlpkg "sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"
	jobsetv1alpha2 "sigs.k8s.io/jobset/api/jobset/v1alpha2"
	schedulerpluginsv1alpha1 "sigs.k8s.io/scheduler-plugins/apis/scheduling/v1alpha1"

	trainer "github.com/kubeflow/trainer/v2/pkg/apis/trainer/v1alpha1"
	"github.com/kubeflow/trainer/v2/pkg/controller"
	runtimecore "github.com/kubeflow/trainer/v2/pkg/runtime/core"
	"github.com/kubeflow/trainer/v2/pkg/util/cert"
	"github.com/kubeflow/trainer/v2/pkg/webhooks"
)

var setupLog = ctrl.Log.WithName("setup")

func must(err error, what string) {
	if err != nil {
		setupLog.Error(err, what)
		os.Exit(1)
	}
}

func main() {
	var metricsAddr, probeAddr, serviceName, secretName string
	var port, burst, workers int
	var qps float64
	flag.StringVar(&metricsAddr, "metrics-bind-address", "0", "metrics address (plain HTTP; 0: none)")
	flag.StringVar(&probeAddr, "health-probe-bind-address", "0", "health probe address (0: none)")
	flag.IntVar(&port, "webhook-server-port", 9443, "webhook server port")
	flag.StringVar(&serviceName, "webhook-service-name", "kubeflow-trainer-controller-manager", "webhook Service name (certificate DNS name)")
	flag.StringVar(&secretName, "webhook-secret-name", "kubeflow-trainer-webhook-cert", "Secret holding the webhook CA and certificate")
	flag.Float64Var(&qps, "kube-api-qps", 0, "client QPS (0: controller-runtime's default; negative: no client-side limit)")
	flag.IntVar(&burst, "kube-api-burst", 0, "client burst (0: controller-runtime's default)")
	flag.IntVar(&workers, "workers", 0, "concurrent reconciles per controller (0: controller-runtime's default, 1)")
	opts := zap.Options{}
	opts.BindFlags(flag.CommandLine)
	flag.Parse()
	ctrl.SetLogger(zap.New(zap.UseFlagOptions(&opts)))

	scheme := apiruntime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(scheme))
	utilruntime.Must(trainer.AddToScheme(scheme))
	utilruntime.Must(jobsetv1alpha2.AddToScheme(scheme))
	utilruntime.Must(schedulerpluginsv1alpha1.AddToScheme(scheme))

	kubeConfig := ctrl.GetConfigOrDie()
	if qps != 0 {
		kubeConfig.QPS = float32(qps)
	}
	if burst != 0 {
		kubeConfig.Burst = burst
	}
	mgr, err := ctrl.NewManager(kubeConfig, ctrl.Options{
		Scheme:                 scheme,
		Client:                 client.Options{Cache: &client.CacheOptions{Unstructured: true}},
		Metrics:                metricsserver.Options{BindAddress: metricsAddr},
		WebhookServer:          webhook.NewServer(webhook.Options{Port: port}),
		HealthProbeBindAddress: probeAddr,
		Controller:             ctrlconfig.Controller{MaxConcurrentReconciles: workers},
	})
	must(err, "unable to start manager")

	certsReady := make(chan struct{})
	must(cert.ManageCerts(mgr, cert.Config{
		WebhookSecretName:        secretName,
		WebhookServiceName:       serviceName,
		WebhookConfigurationName: "validator.trainer.kubeflow.org",
	}, certsReady), "unable to set up cert rotation")
	ctx := ctrl.SetupSignalHandler()
	must(mgr.AddHealthzCheck("healthz", healthz.Ping), "unable to set up health check")
	runtimes, err := runtimecore.New(ctx, mgr.GetClient(), mgr.GetFieldIndexer())
	must(err, "could not initialize runtimes")
	go func() {
		<-certsReady
		if name, err := controller.SetupControllers(mgr, runtimes, ctrlpkg.Options{}); err != nil {
			must(err, "could not create controller "+name)
		}
		if name, err := webhooks.Setup(mgr, runtimes); err != nil {
			must(err, "could not create webhook "+name)
		}
	}()
	must(mgr.Start(ctx), "could not run manager")
}
