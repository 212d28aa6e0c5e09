"""Engine telemetry: Prometheus scraping (and later NVML/GPM sampling, profilers)."""
