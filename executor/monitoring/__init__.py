"""What operators watch: Prometheus instruments and the queue collector (metrics), and the
admin port serving /healthz and /metrics (admin). Imports `storage` only, so every layer above
may count into it."""
