"""Engine adapters (pure): ServeSpec -> LaunchPlan, and the cross-engine lever catalog."""
