"""The team stack (`maskunet infra up|down|status`): MLflow + Postgres + S3 object store with
Docker Compose (infra/compose.yaml), or, where containers cannot run, an MLflow server on
127.0.0.1 over sqlite and a local artifact folder, recorded in a state dir."""
