"""The MLflow model registry: the registered model (from code, no pickle), evidence, promotion."""
