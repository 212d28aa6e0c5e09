"""perftune's simulated engine: vLLM-style continuous batching with roofline step times."""
