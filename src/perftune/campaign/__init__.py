"""The campaign: evidence bundle, gated phases, champion selection (perftune optimize)."""
