"""One real Ray head (token auth on, job server on 127.0.0.1) for every job-submission test."""
import os
import sys
from pathlib import Path

import pytest

from tests.fixtures.cli import maskunet_env
from tests.fixtures.ray_head import start_ray_head, stop_ray_head


@pytest.fixture(scope="module")
def ray_head():
    env = maskunet_env()
    env.pop("RAY_AUTH_MODE")  # the head turns token auth on
    # Job drivers and Train workers inherit the head's environment: the CPU DeepSpeed settings
    # and the persistent extension cache of the training tests.
    env.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/maskunet/torch_extensions"))
    env["DS_ACCELERATOR"] = "cpu"
    # The entrypoint says `python` (the image's); here that must be this interpreter.
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    head = start_ray_head(num_cpus=3, env=env)
    try:
        yield head
    finally:
        stop_ray_head(head)


@pytest.fixture
def client_env(ray_head):
    """A submitting shell: the job server's address and token in the environment."""
    env = maskunet_env(RAY_JOB_ADDRESS=ray_head.address, RAY_AUTH_TOKEN=ray_head.token)
    env.pop("RAY_AUTH_MODE")
    return env
