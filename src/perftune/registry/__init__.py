"""Known-good serving configs: flags a model needs to boot or survive load, recorded and enforced."""
