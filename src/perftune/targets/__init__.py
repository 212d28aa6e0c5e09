"""Deploy targets: where a LaunchPlan runs (local processes now; Slurm and Kubernetes later)."""
