"""One typed job config: every `jobs/*.yaml` is validated by `JobConfig` before any work starts."""
from maskunet_platform.config.job import JobConfig, load_job, apply_overrides, ConfigError

__all__ = ["JobConfig", "load_job", "apply_overrides", "ConfigError"]
