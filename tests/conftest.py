pytest_plugins = ["tests.fixtures.models", "tests.fixtures.s3", "tests.fixtures.ray_local", "tests.fixtures.mlflow_server"]
