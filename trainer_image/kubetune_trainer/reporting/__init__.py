"""How a run tells the world how it goes: progress records and their throttling
(``progress``), the FineTuneJob status reporter (``kube_status``), Prometheus metrics
(``train_metrics``). The lowest layer: imports nothing else of the trainer."""
