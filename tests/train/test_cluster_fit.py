"""A joined Ray cluster too small for training plus its input pipeline is named before it hangs."""
from maskunet_platform.config import load_job
from maskunet_platform.train.launcher import data_cpu_shortfall
from tests.train.conftest import REPO


def test_a_cluster_whose_cpus_all_go_to_training_workers_is_warned_about():
    job = load_job(REPO / "jobs" / "local.yaml", ["train.num_workers=2", "train.cpus_per_worker=1"])
    warning = data_cpu_shortfall(job, cluster_cpus=2)
    assert warning and "2 CPUs" in warning and "train.cpus_per_worker" in warning
    assert data_cpu_shortfall(job, cluster_cpus=2.5) is not None
    assert data_cpu_shortfall(job, cluster_cpus=3) is None
    half = load_job(REPO / "jobs" / "local.yaml", ["train.num_workers=2", "train.cpus_per_worker=0.5"])
    assert data_cpu_shortfall(half, cluster_cpus=2) is None
