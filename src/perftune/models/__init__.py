"""Model intelligence: config.json -> ModelCard (shapes, parameters, KV bytes), catalog, synth."""
