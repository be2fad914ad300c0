"""What the datasource tells operators, fed by the events: counters, log lines and
Prometheus metrics."""
