"""``kubetune-operator``: run the FineTuneJob operator (kopf) with configuration from the
environment.

KUBETUNE_TRAINER_IMAGE, KUBETUNE_EXPORT_IMAGE, KUBETUNE_DEFAULT_STORAGE: cluster facts.
KUBETUNE_NAMESPACE: watch only this namespace (default: every namespace).
KUBETUNE_METRICS_PORT: Prometheus /metrics port (default 8080; 0 turns it off).
KUBETUNE_HEALTH_PORT: kopf's liveness endpoint, GET /healthz (default 8081; 0 turns it off): it
answers only while kopf's event loop runs, unlike /metrics, which a thread serves.
KUBETUNE_HA=1: kopf peering, so only one of a pair of replicas acts: the one with the highest
KUBETUNE_PEERING_PRIORITY (random when unset: kopf pauses every replica when two share one); a
standby takes over KUBETUNE_PEERING_LIFETIME_SECONDS (60) after the active one's last keep-alive.
Needs kopf's peering CRDs (kopf.dev/v1 ClusterKopfPeering, KopfPeering) and a peering object
named "kubetune" (a KopfPeering in KUBETUNE_NAMESPACE when set).
KUBETUNE_API_WORKERS (32): API calls in flight at once. KUBETUNE_LAUNCHER_DEBOUNCE_SECONDS (0.5).
KUBETUNE_PODS_GRACE_SECONDS (30): how long an attempt's pods may take to run before the job's
PodsReady condition says why they do not.
KUBETUNE_TIMER_SECONDS, KUBETUNE_DEPENDENCY_POLL_SECONDS, KUBETUNE_RETRY_BACKOFF_SECONDS,
KUBETUNE_WATCH_TIMEOUT_SECONDS: loop timings (tests shorten them).
"""

from __future__ import annotations

import argparse
import logging
import sys

import kopf

from kubetune.controller import memory
from kubetune.controller.config import OperatorConfig
from kubetune.controller.handlers import build_registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubetune-operator", description=__doc__.split("\n")[0])
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s level=%(levelname)s logger=%(name)s %(message)s",
        stream=sys.stderr,
    )
    memory.limit_arenas()  # before kopf starts its threads
    if not args.verbose:
        # kopf says "Handler 'on_job_event' succeeded." for every watch event: two lines per
        # event of every job and launcher, nothing an operator can act on. Its warnings and
        # errors still show.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    config = OperatorConfig.from_env()
    logging.getLogger("kubetune.operator").info(
        "starting namespace=%s ha=%s metrics_port=%s trainer_image=%s",
        config.namespace or "*",
        config.ha,
        config.metrics_port,
        config.trainer_image,
    )
    kopf.run(
        registry=build_registry(config),
        liveness_endpoint=(
            f"http://0.0.0.0:{config.health_port}/healthz" if config.health_port else None
        ),
        standalone=not config.ha,
        namespaces=[config.namespace] if config.namespace else (),
        clusterwide=config.namespace is None,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
