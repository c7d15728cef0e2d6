"""The operator: a pure lifecycle (``lifecycle``), kopf handlers that observe and execute
(``handlers``), and Prometheus metrics (``metrics``)."""
