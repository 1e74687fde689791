"""A subject folder -> laion-art-schema parquet that the ordinary data pipeline reads.

`prepare_subject_job` runs on the driver before training starts: it reads the images of
`data.source` (a local folder), captions each with `data.subject.instance_prompt`, repeats
them to `instance_rows` rows per epoch, and with prior preservation adds `num_class_images`
images of `class_prompt` drawn by the base (in a Ray task on one training worker's
resources). Rows carry a `loss_weight` column: 1 for instance rows, `prior_loss_weight` for
class rows (equally many as instance rows, so a batch's weighted mean is in expectation
(L_instance + prior_loss_weight * L_prior) / 2, DreamBooth's loss up to a factor 2). The
shards are written once under `<train.storage_path>/subject-data/<digest>/` (the digest
covers the image bytes, the subject settings, the base and the resolution) with a
`subject.json` saying what the shapes detector sees in the instance images (colour, kind,
cells, backgrounds), and the job's `data.source` is pointed at them.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from maskunet_platform.config import JobConfig

log = logging.getLogger("maskunet.subject")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MARKER = "subject.json"
LOSS_WEIGHT = "loss_weight"
SHARDS = 4
# The embedded default's subject: a large purple circle, a colour / kind combination the
# captions' grammar only names as "a large purple circle", never as "sks".
SAMPLE_SUBJECT = ("circle", "purple", "large")
SAMPLE_BACKGROUND = "white"
SAMPLE_SIDES = (96, 112, 128, 144)


class SubjectDataError(ValueError):
    """A subject folder that cannot be used; names data.source."""


def instance_images(folder: str, resolution: int | None = None) -> list[Path]:
    """The subject's image files, each checked: it decodes, and (with `resolution`) its shorter
    side is at least `data.resolution`, since a smaller photo would train the subject blurred.
    Anything else is a SubjectDataError naming the file; files of other types are ignored."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise SubjectDataError(f"data.source: {folder} is not a folder (data.subject needs a local folder of images)")
    entries = sorted(root.iterdir())
    files = [p for p in entries if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    if not files:
        others = [p.name for p in entries]
        found = f"; it holds {len(others)} other file(s): {', '.join(others[:3])}" if others else "; it is empty"
        raise SubjectDataError(f"data.source: {folder} has no images ({', '.join(IMAGE_SUFFIXES)}){found}")
    for path in files:
        check_instance_image(path, resolution)
    return files


def check_instance_image(path: Path, resolution: int | None) -> None:
    from maskunet_platform.data.preprocess import BadRow, decode_image

    try:
        _, (width, height) = decode_image(path.read_bytes())
    except BadRow as e:
        raise SubjectDataError(f"data.source: {path} is not a readable image ({e.reason})") from None
    if resolution and min(width, height) < resolution:
        raise SubjectDataError(f"data.source: {path} is {width}x{height}; every subject image needs a shorter "
                               f"side of at least data.resolution ({resolution}) pixels")


def write_sample_subject(folder: str) -> list[Path]:
    """The embedded default's subject folder: the sample subject in the center on white, drawn
    at a few sizes (PNG), like a few photos of one object."""
    from maskunet_platform.data.sample import Shape, draw_scene

    kind, colour, size = SAMPLE_SUBJECT
    root = Path(folder).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    out = []
    for i, side in enumerate(SAMPLE_SIDES):
        path = root / f"subject-{i:02d}.png"
        draw_scene([Shape(kind, colour, size, 1, 1)], SAMPLE_BACKGROUND, side).save(path)
        out.append(path)
    return out


def is_prepared(source: str) -> bool:
    import pyarrow.fs as pafs

    from maskunet_platform.data.uri import resolve_output

    fs, path = resolve_output(source)
    return fs.get_file_info(f"{path.rstrip('/')}/{MARKER}").type == pafs.FileType.File


def read_marker(source: str, endpoint_url: str | None = None) -> dict:
    from maskunet_platform.data.uri import resolve_output

    fs, path = resolve_output(source, endpoint_url)
    with fs.open_input_stream(f"{path.rstrip('/')}/{MARKER}") as f:
        return json.loads(f.read().decode())


def prepared_location(job: JobConfig, images: list[bytes], base_location: str) -> str:
    digest = hashlib.sha256()
    for data in images:
        digest.update(hashlib.sha256(data).digest())
    digest.update(job.data.subject.model_dump_json(exclude={"report"}).encode())
    digest.update(f"{base_location}\0{job.data.resolution}".encode())
    return f"{job.train.storage_path.rstrip('/')}/subject-data/{digest.hexdigest()[:16]}"


def prepare_subject_job(job: JobConfig, base_location: str, progress=None) -> JobConfig:
    """The job reading the prepared subject data (see the module docstring); unchanged when
    it is not a subject job or its source already is prepared data."""
    from maskunet_platform.console.progress import Progress

    if job.data.subject is None or is_prepared(job.data.source):
        return job
    progress = progress or Progress()  # the console's silent default
    images = [p.read_bytes() for p in instance_images(job.data.source, job.data.resolution)]
    out = prepared_location(job, images, base_location)
    if "://" not in out:
        out = str(Path(out).expanduser().resolve())
    if not is_prepared(out):
        s = job.data.subject
        what = f"subject data ({len(images)} images" + (f" + {s.num_class_images} class images)" if s.num_class_images
                                                      else ")")
        with progress.stage(what):
            classes = draw_class_images(job, base_location) if s.num_class_images else []
            write_subject_data(job, images, classes, out)
    data = job.data.model_copy(update={"source": out})
    return job.model_copy(update={"data": data})


def draw_class_images(job: JobConfig, base_location: str) -> list[bytes]:
    """`num_class_images` PNGs of `class_prompt` from the base, in a Ray task where training runs."""
    import ray

    from maskunet_platform.train.post_training import task_resources

    task = ray.remote(_draw_class_images).options(**task_resources(job), max_retries=1)
    return ray.get(task.remote(job.model_dump(mode="json"), base_location))


def _draw_class_images(job_data: dict, base_location: str) -> list[bytes]:
    import torch

    from maskunet import MaskUNetPipeline
    from maskunet_platform.bench.shapes.generate import generate_images
    from maskunet_platform.data.sample import encode_image
    from PIL import Image

    job = JobConfig.model_validate(job_data)
    s = job.data.subject
    device = "cuda" if job.train.use_gpu and torch.cuda.is_available() else "cpu"
    pipe = MaskUNetPipeline.from_base(base_location).to(device)
    pipe.set_progress_bar_config(disable=True)
    seeds = range(s.class_seed, s.class_seed + s.num_class_images)
    arrays = generate_images(pipe, [s.class_prompt], seeds, s.class_steps, s.class_guidance,
                             batch_size=16, resolution=job.data.resolution)
    return [encode_image(Image.fromarray(a), "PNG") for a in arrays]


def write_subject_data(job: JobConfig, images: list[bytes], classes: list[bytes], out: str) -> None:
    """The shards (instance rows then class rows, dealt round-robin) and the marker, last."""
    from maskunet_platform.data.sample import SCHEMA
    from maskunet_platform.data.uri import resolve_output

    s = job.data.subject
    n_instance = max(s.instance_rows, len(classes), len(images))
    rows = [(images[i % len(images)], s.instance_prompt, 1.0) for i in range(n_instance)]
    rows += [(data, s.class_prompt, s.prior_loss_weight) for data in classes]
    schema = SCHEMA.append(pa.field(LOSS_WEIGHT, pa.float32()))
    fs, path = resolve_output(out, job.data.s3_endpoint_url)
    fs.create_dir(path, recursive=True)
    for k in range(SHARDS):
        part = rows[k::SHARDS]
        table = pa.Table.from_pydict({
            "image": [{"bytes": b, "path": f"{k}-{i:05d}.png"} for i, (b, _, _) in enumerate(part)],
            "text": [t for _, t, _ in part], "aesthetic": [6.0] * len(part),
            LOSS_WEIGHT: [w for _, _, w in part]}, schema=schema)
        pq.write_table(table, f"{path}/train-{k:05d}-of-{SHARDS:05d}.parquet", filesystem=fs)
    marker = {"kind": "maskunet-subject-data", "instance_images": len(images), "instance_rows": n_instance,
              "class_images": len(classes), "instance_prompt": s.instance_prompt, "class_prompt": s.class_prompt,
              **subject_signature(images)}
    with fs.open_output_stream(f"{path}/{MARKER}") as f:
        f.write(json.dumps(marker, indent=2).encode())


def subject_signature(images: list[bytes]) -> dict:
    """What the shapes detector sees in the instance images: the most common (colour, kind)
    of their occupied cells (None when it sees no shape), and each image's context
    (background, cell) where it found it."""
    from maskunet_platform.bench.shapes.detector import detect
    from maskunet_platform.data.preprocess import decode_image

    found, contexts = Counter(), []
    for data in images:
        image, _ = decode_image(data)
        d = detect(image)
        for i, cell in enumerate(d.cells):
            if cell is not None:
                found[(cell.colour, cell.kind)] += 1
                contexts.append([d.background, i // 3, i % 3])
    if not found:
        log.warning("subject: the shapes detector finds no shape in the instance images; no appearance report")
        return {"subject": None, "contexts": []}
    (colour, kind), _ = found.most_common(1)[0]
    return {"subject": {"colour": colour, "kind": kind}, "contexts": contexts}
