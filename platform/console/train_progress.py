"""Training progress from the Ray Train workers to the driver's console while `fit()` blocks.

Rank 0 posts its log-step metrics (and its warnings) to a small actor, fire and forget: the
call returns at once and nothing in the training step waits for it. A thread in the driver
polls the actor (every update since the last poll, in order) and feeds the console's
progress display. A worker group restarted after a
failure posts to the same actor, so the display continues (and says so).
"""
import logging
import threading
import time
from collections import deque
from typing import Optional

import ray

from maskunet_platform.console.progress import format_duration

log = logging.getLogger(__name__)
POLL_S = 0.5


@ray.remote(num_cpus=0, max_restarts=0)
class ProgressBoard:
    """Step updates and events (worker set-up, warnings) since the last read, in order; and
    the one result rank 0 hands the driver (its post-training work), kept pickled so that
    this actor never imports the result's classes (torch, diffusers: seconds of CPU). One
    actor for both: each actor is a process whose start costs 1.5 s of CPU."""

    MAX_PENDING = 1000  # a driver that stopped reading costs at most this much memory

    def __init__(self):
        self._pending: deque = deque(maxlen=self.MAX_PENDING)
        self._result: Optional[bytes] = None

    def put_result(self, pickled: bytes) -> None:
        self._result = pickled

    def take_result(self) -> Optional[bytes]:
        return self._result

    def post(self, update: dict) -> None:
        self._pending.append(("step", update))

    def event(self, kind: str, payload: dict) -> None:
        self._pending.append((kind, payload))

    def take(self) -> list[tuple[str, dict]]:
        pending, self._pending = list(self._pending), deque(maxlen=self.MAX_PENDING)
        return pending


class BoardClient:
    """Worker side: a no-op unless this is rank 0 and the driver passed a board."""

    def __init__(self, board, enabled: bool):
        self.board = board if enabled else None

    def ready(self, resumed_step: int, setup_seconds: float) -> None:
        self._send("event", "ready", {"resumed_step": resumed_step, "setup_s": setup_seconds})

    def step(self, step: int, metrics: dict) -> None:
        self._send("post", {"step": step, "loss": metrics.get("train/loss"),
                            "reward": metrics.get("train/reward"),
                            "sparsity": metrics.get("train/sparsity_realised"),
                            "images_per_s": metrics.get("train/images_per_s")})

    def warning(self, text: str) -> None:
        self._send("event", "warning", {"text": text})

    def phase(self, name: str) -> None:
        """Training is over; the post-training work `name` begins (see BoardWatcher)."""
        self._send("event", "phase", {"name": name})

    def stage(self, name: str, total: int) -> None:
        """Open the next counted stage (see StageBoardWatcher)."""
        self._send("event", "stage", {"name": name, "total": total})

    def stage_step(self, step: int, **fields) -> None:
        self._send("post", {"step": step, **fields})

    def _send(self, method: str, *args) -> None:
        if self.board is None:
            return
        try:
            getattr(self.board, method).remote(*args)  # fire and forget: never waits
        except Exception as e:  # noqa: BLE001 - progress display must never stop training
            log.debug("progress board unavailable: %s", e)
            self.board = None

    def forward_warnings(self, logger_name: str = "maskunet_platform") -> None:
        """Our own warnings on rank 0 (e.g. MLflow unreachable) reach the driver's terminal."""
        if self.board is not None:
            logging.getLogger(logger_name).addHandler(_BoardWarnings(self))


class _BoardWarnings(logging.Handler):
    def __init__(self, client: BoardClient):
        super().__init__(logging.WARNING)
        self.client = client

    def emit(self, record: logging.LogRecord) -> None:
        self.client.warning(record.getMessage().splitlines()[0])


class _BoardPoller:
    """Driver side: a thread that polls the board and hands each update to `_handle` until
    `stop()`; `_stages()` are closed (or abandoned after a failure) at the end."""

    def __init__(self, board, progress, thread_name: str):
        self.board, self.progress = board, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=thread_name, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self, ok: bool) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self._poll()  # the last update
        for stage in self._stages():
            if stage is not None:
                stage.done() if ok else stage.abandon()

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            self._poll()

    def _poll(self) -> None:
        try:
            pending = ray.get(self.board.take.remote(), timeout=10)
        except Exception as e:  # noqa: BLE001 - a slow poll only delays the display
            log.debug("progress poll failed: %s", e)
            return
        for kind, payload in pending:
            if kind == "warning":
                self.progress.warn(payload["text"])
            else:
                self._handle(kind, payload)

    def _handle(self, kind: str, payload: dict) -> None:
        raise NotImplementedError

    def _stages(self) -> tuple:
        raise NotImplementedError


class BoardWatcher(_BoardPoller):
    """Drives the `workers` and `training` stages of a Ray Train run, and the post-training
    stage when rank 0 does that work (`post_training`: its stage, to be given its parts)."""

    def __init__(self, board, progress, total_steps: int):
        super().__init__(board, progress, "maskunet-train-progress")
        self.total_steps = total_steps
        self._workers = progress.start("start workers")
        self._training = None
        self.post_training = None
        self.ready_events = 0

    def _stages(self) -> tuple:
        return self._workers, self._training, self.post_training

    def _handle(self, kind: str, payload: dict) -> None:
        if kind == "ready":
            self._on_ready(payload)
        elif kind == "phase" and self.post_training is None:
            if self._training is not None:
                self._training.done()
            self.post_training = self.progress.start(payload["name"])
        elif kind == "step" and self._training is not None:
            fields = {k: payload.get(k) for k in ("loss", "reward", "sparsity", "images_per_s")}
            self._training.update(payload["step"], **fields)

    def _on_ready(self, payload: dict) -> None:
        self.ready_events += 1
        resumed = payload["resumed_step"]
        if self.ready_events > 1:
            self.progress.warn(f"a worker failed: the worker group restarted from step {resumed}")
        if not self._workers.closed:
            # Ray Train's start (controller, worker processes, process group), then the
            # workers' own set-up (imports, base, engine), as rank 0 measured it.
            total = time.monotonic() - self._workers.started
            setup = min(float(payload.get("setup_s") or 0.0), total)
            self._workers.parts = {"start workers": total - setup, "worker set-up": setup}
            self._workers.done(f"{format_duration(setup)} of it worker set-up"
                               + (f"; resumed at step {resumed}" if resumed else ""))
        if self._training is None:
            self._training = self.progress.steps("training", self.total_steps, start=resumed)


class StageBoardWatcher(_BoardPoller):
    """For a remote task made of counted stages: a `stage` event ({"name", "total"}) closes
    the previous stage and opens the next; step posts update it."""

    def __init__(self, board, progress):
        super().__init__(board, progress, "maskunet-stage-progress")
        self._stage = None

    def _stages(self) -> tuple:
        return (self._stage,)

    def _handle(self, kind: str, payload: dict) -> None:
        if kind == "stage":
            if self._stage is not None:
                self._stage.done()
            self._stage = self.progress.steps(payload["name"], payload["total"])
        elif kind == "step" and self._stage is not None:
            self._stage.update(payload.pop("step"), **payload)
