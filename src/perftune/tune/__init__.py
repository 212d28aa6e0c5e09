"""Phase 3: cross-engine lever tuning with a same-node, interleaved, multi-trial A/B."""
