"""Run as `python -m tests.clusters.node_loss_scenario SETTINGS_JSON` (its own process: the
test session's Ray stays untouched). A 3-node Ray cluster on this machine (`ray.cluster_utils.
Cluster`): a head without CPUs (driver, Train controller) and two 2-CPU worker nodes. The
platform's own `train_job` trains one worker; once a checkpoint exists, the node hosting the
training worker is removed. Prints one JSON line: what was removed, the outcome's metrics."""
import json
import os
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def main(settings: dict) -> dict:
    os.environ["RAY_AUTH_MODE"] = "disabled"
    import ray
    from ray.cluster_utils import Cluster

    from maskunet_platform.config import load_job
    from maskunet_platform.train.launcher import train_job
    from maskunet_platform.train.runs import plan_run

    # Cluster records its address under $RAY_TMPDIR/ray, which must exist.
    Path(settings["temp_dir"], "ray").mkdir(parents=True, exist_ok=True)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "temp_dir": settings["temp_dir"],
                                                            "include_dashboard": False})
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        job = load_job(REPO / "jobs" / "local.yaml", settings["overrides"])
        plan = plan_run(job)
        removed: dict = {}
        watcher = threading.Thread(target=_remove_worker_node, daemon=True,
                                   args=(cluster, Path(job.train.storage_path) / plan.run_name, removed))
        watcher.start()
        outcome = train_job(job, address=cluster.address, plan=plan)
        return {"removed": removed, "finished_at": time.time(), "metrics": outcome.metrics, "run_id": outcome.mlflow_run_id,
                "checkpoint": outcome.checkpoint_path, "run_name": plan.run_name}
    finally:
        ray.shutdown()
        cluster.shutdown()


def _remove_worker_node(cluster, run_dir: Path, removed: dict) -> None:
    """Once Ray Train has registered a checkpoint, remove the node the training worker runs on.
    (A checkpoint folder on disk is not enough: until the controller has recorded the report,
    a restart would rightly begin from scratch.)"""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and not _registered_checkpoints(run_dir):
        time.sleep(0.2)
    node_id = _training_worker_node()
    for node in list(cluster.worker_nodes):
        if node.node_id == node_id:
            removed.update(node_id=node_id, after=_registered_checkpoints(run_dir))
            cluster.remove_node(node, allow_graceful=False)
            removed["at"] = time.time()
            return
    removed["error"] = f"no worker node hosts the training worker (node {node_id})"


def _registered_checkpoints(run_dir: Path) -> list[str]:
    try:
        snapshot = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return []
    return [c["checkpoint_dir_name"] for c in snapshot.get("checkpoint_results", [])]


def _training_worker_node() -> str:
    """The node of the live RayTrainWorker actor, from the GCS actor table (no dashboard needed)."""
    from ray._private.state import actors

    for _ in range(100):
        for info in actors().values():
            if "RayTrainWorker" in info.get("ActorClassName", "") and info.get("State") == "ALIVE":
                return info["Address"]["NodeID"]
        time.sleep(0.2)
    return ""


if __name__ == "__main__":
    result = main(json.loads(sys.argv[1]))
    print("RESULT " + json.dumps(result, default=str), flush=True)
