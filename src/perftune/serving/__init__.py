"""The neutral layer under both engine adapters and the simulator: ServeSpec -> LaunchPlan, the lever
catalog, and the engine registry. Engines, the simulator and targets import this; it imports none of
them (the registry discovers its plug-in modules by name at first use)."""
