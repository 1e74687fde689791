"""Resume from the newest *complete* checkpoint in the run's storage.

Ray Train resumes only from checkpoints its controller has registered. A checkpoint that every
worker had already uploaded, but that the controller had not yet polled when a worker died,
is on storage yet unknown to Ray (seen under load on 2 cores: a kill right after a checkpoint
restarted the run from step 0). Each rank therefore writes a small marker into the checkpoint
folder *after* its upload returned; a folder holding every rank's marker is complete.
"""
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


def newest_complete_checkpoint(world_size: int) -> ray.train.Checkpoint | None:
    storage = ray.train.get_context().get_storage()
    fs = storage.storage_filesystem
    entries = fs.get_file_info(pafs.FileSelector(storage.experiment_fs_path, allow_not_found=True))
    folders = [e.path for e in entries if e.type == pafs.FileType.Directory and e.base_name.startswith(CHECKPOINT_PREFIX)]
    for folder in sorted(folders, key=checkpoint_step, reverse=True):
        names = {e.base_name for e in fs.get_file_info(pafs.FileSelector(folder))}
        if all(_marker(rank) in names for rank in range(world_size)):
            return ray.train.Checkpoint(path=folder, filesystem=fs)
    return None


def checkpoint_to_resume(world_size: int) -> ray.train.Checkpoint | None:
    """The newer of Ray's registered checkpoint and the newest complete one on storage."""
    found = [c for c in (ray.train.get_checkpoint(), newest_complete_checkpoint(world_size)) if c is not None]
    return max(found, key=lambda c: checkpoint_step(c.path), default=None)
