"""Ray Train + DeepSpeed mask training, checkpoints, MLflow."""
