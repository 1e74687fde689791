"""Ray Tune sweeps over the job config: search space, trial driver, MLflow parent/child runs."""
