"""The operator: a pure lifecycle (``lifecycle``); the API client that observes and executes
(``api_client``); per-job scheduling, requeues and retries (``scheduling``); HA peering
(``peering``); Prometheus metrics (``metrics``); configuration (``config``); and the kopf
wiring that puts them together at start-up (``handlers``)."""
