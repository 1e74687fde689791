"""Resume from the newest *complete* checkpoint in the run's storage.

Ray Train resumes only from checkpoints its controller has registered. A checkpoint that every
worker had already uploaded, but that the controller had not yet polled when a worker died,
is on storage yet unknown to Ray (seen under load on 2 cores: a kill right after a checkpoint
restarted the run from step 0). Each rank therefore writes a small marker into the checkpoint
folder *after* its upload returned; a folder holding every rank's marker is complete.
"""
import json
from pathlib import PurePosixPath

import pyarrow.fs as pafs
import ray.train

CHECKPOINT_PREFIX = "checkpoint_step"


def checkpoint_dir_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def checkpoint_step(path: str) -> int:
    return int(PurePosixPath(path).name[len(CHECKPOINT_PREFIX):])


def _marker(rank: int) -> str:
    return f".complete_rank{rank:05d}"


def mark_complete(step: int, rank: int) -> None:
    """Called by every rank once `ray.train.report` (and so its upload) has returned."""
    storage = ray.train.get_context().get_storage()
    path = f"{storage.experiment_fs_path}/{checkpoint_dir_name(step)}/{_marker(rank)}"
    with storage.storage_filesystem.open_output_stream(path) as out:
        out.write(b"ok")


def _newest_complete_folder(fs: pafs.FileSystem, experiment_path: str, world_size: int) -> str | None:
    entries = fs.get_file_info(pafs.FileSelector(experiment_path, allow_not_found=True))
    folders = [e.path for e in entries if e.type == pafs.FileType.Directory and e.base_name.startswith(CHECKPOINT_PREFIX)]
    for folder in sorted(folders, key=checkpoint_step, reverse=True):
        names = {e.base_name for e in fs.get_file_info(pafs.FileSelector(folder))}
        if all(_marker(rank) in names for rank in range(world_size)):
            return folder
    return None


def newest_complete_checkpoint(world_size: int) -> ray.train.Checkpoint | None:
    storage = ray.train.get_context().get_storage()
    folder = _newest_complete_folder(storage.storage_filesystem, storage.experiment_fs_path, world_size)
    return None if folder is None else ray.train.Checkpoint(path=folder, filesystem=storage.storage_filesystem)


def rows_trained_at_newest_checkpoint(job, run_name: str, storage: tuple) -> int:
    """Rows the run's newest complete checkpoint had trained on (0 without one), read from
    `storage` = (path, pyarrow filesystem or None for local) as `launcher.storage_location`
    resolves it: where a restarted data stream resumes."""
    from maskunet_platform.train.checkpoint import STATE_FILE

    path, fs = storage
    fs = fs or pafs.LocalFileSystem()
    folder = _newest_complete_folder(fs, f"{path}/{run_name}", job.train.num_workers)
    if folder is None:
        return 0
    with fs.open_input_stream(f"{folder}/{STATE_FILE}") as f:
        state = json.loads(f.read())
    per_step = job.data.batch_size * job.train.deepspeed.gradient_accumulation_steps * state["world_size"]
    return state["step"] * per_step


def checkpoint_to_resume(world_size: int) -> ray.train.Checkpoint | None:
    """The newer of Ray's registered checkpoint and the newest complete one on storage."""
    found = [c for c in (ray.train.get_checkpoint(), newest_complete_checkpoint(world_size)) if c is not None]
    return max(found, key=lambda c: checkpoint_step(c.path), default=None)
