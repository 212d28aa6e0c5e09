"""The perf lake: DuckDB tables of campaigns, cells, trials, requests, champions and findings."""
