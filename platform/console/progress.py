"""Progress of one command: stages with their durations, and counted steps within a stage.

On a terminal, a live display (rich): a spinner per running stage, a bar for steps with the
latest loss / sparsity / images per second and an ETA, finished stages as lines above it. On
anything else (CI, pipes, `ray job logs`) plain lines that are never redrawn: one per finished
stage, one every `interval_s` while steps advance (and the last one), and a "still running"
line every `heartbeat_s` during a long stage without steps. Quiet mode keeps only the timings.
"""
import os
import threading
import time
from contextlib import contextmanager
from typing import Optional, TextIO

PLAIN_INTERVAL_S = float(os.environ.get("MASKUNET_PROGRESS_INTERVAL_S", "10"))
HEARTBEAT_S = 30.0


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def format_fields(fields: dict) -> str:
    """`loss 1.0123  reward 0.4210  sparsity 25.1%  46.2 img/s`: the fields a step update carries, in order."""
    parts = []
    for key, value in fields.items():
        if value is None:
            continue
        if key in ("loss", "reward"):
            parts.append(f"{key} {value:.4f}")
        elif key == "sparsity":
            parts.append(f"sparsity {value:.1%}")
        elif key == "images_per_s":
            parts.append(f"{value:.1f} img/s")
        elif key == "rows_per_s":
            parts.append(f"{value:.0f} rows/s")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class Stage:
    def __init__(self, progress: "Progress", name: str):
        self.progress, self.name, self.started = progress, name, time.monotonic()
        self.closed = False
        # Where the stage's time went, when known (e.g. measured in a remote task): the
        # timings then record these parts instead of the whole, and the stage's line names them.
        self.parts: dict[str, float] = {}

    def done(self, note: str = "") -> float:
        """Mark the stage finished (one line in the plain display); returns its seconds."""
        if self.closed:
            return 0.0
        self.closed = True
        seconds = time.monotonic() - self.started
        if self.parts and not note:
            note = ", ".join(f"{name} {format_duration(s)}" for name, s in self.parts.items())
        self.progress._stage_done(self, seconds, note)
        return seconds

    def abandon(self) -> None:
        """The stage ended with an error: drop it without a line (the error says what happened)."""
        if not self.closed:
            self.closed = True
            self.progress._stage_abandoned(self)


class Steps(Stage):
    """A stage counted in steps: `update(done, loss=..., ...)` from any thread."""

    def __init__(self, progress: "Progress", name: str, total: Optional[int], unit: str, start: int):
        super().__init__(progress, name)
        self.total, self.unit, self.done_count, self.start = total, unit, start, start
        self.fields: dict = {}
        self._first: Optional[tuple[float, int]] = None

    def update(self, done: int, **fields) -> None:
        now = time.monotonic()
        if self._first is None:
            self._first = (now, done)
        self.done_count, self.fields = done, fields
        self.progress._steps_updated(self)

    def eta_seconds(self) -> Optional[float]:
        if self.total is None or self._first is None:
            return None
        t0, d0 = self._first
        if self.done_count <= d0:
            return None
        rate = (self.done_count - d0) / max(time.monotonic() - t0, 1e-9)
        return max(self.total - self.done_count, 0) / rate

    def detail(self) -> str:
        """The latest fields and the ETA, without the count."""
        eta = self.eta_seconds()
        running = self.total is not None and self.done_count < self.total
        tail = f"ETA {format_duration(eta)}" if eta is not None and running else ""
        return "  ".join(x for x in (format_fields(self.fields), tail) if x)

    def describe(self) -> str:
        count = f"{self.done_count}/{self.total}" if self.total is not None else str(self.done_count)
        return f"{self.unit} {count}  {self.detail()}".rstrip()


class Progress:
    """Silent progress (quiet mode, library use): records stage timings, prints nothing."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.started = time.monotonic()
        self._lock = threading.RLock()
        self._open: list[Stage] = []

    def start(self, name: str) -> Stage:
        stage = Stage(self, name)
        self._opened(stage)
        return stage

    def steps(self, name: str, total: Optional[int], unit: str = "step", start: int = 0) -> Steps:
        steps = Steps(self, name, total, unit, start)
        self._opened(steps)
        return steps

    @contextmanager
    def stage(self, name: str):
        stage = self.start(name)
        try:
            yield stage
        except BaseException:
            stage.abandon()
            raise
        stage.done()

    def line(self, text: str) -> None:
        """An informational line (hidden in quiet mode)."""

    def warn(self, text: str) -> None:
        """A warning that matters (hidden in quiet mode: only the summary and errors)."""

    def close(self) -> None:
        """End of the command: stages still open are dropped without a line."""
        with self._lock:
            for stage in list(self._open):
                stage.abandon()

    # Hooks for the displays below.
    def _opened(self, stage: Stage) -> None:
        with self._lock:
            self._open.append(stage)

    def _stage_done(self, stage: Stage, seconds: float, note: str) -> None:
        with self._lock:
            for name, part in (stage.parts or {stage.name: seconds}).items():
                self.timings[name] = self.timings.get(name, 0.0) + part
            if stage in self._open:
                self._open.remove(stage)

    def _stage_abandoned(self, stage: Stage) -> None:
        with self._lock:
            if stage in self._open:
                self._open.remove(stage)

    def _steps_updated(self, steps: Steps) -> None:
        pass


class PlainProgress(Progress):
    """Plain lines for a non-interactive stdout: nothing is ever redrawn."""

    def __init__(self, stream: TextIO, interval_s: float = PLAIN_INTERVAL_S, heartbeat_s: float = HEARTBEAT_S):
        super().__init__()
        self.stream, self.interval_s, self.heartbeat_s = stream, interval_s, heartbeat_s
        self._last_line: dict[int, float] = {}  # stage -> when its last line was printed
        self._shown: set[int] = set()  # step stages that printed a line already
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name="maskunet-progress", daemon=True)
        self._heartbeat.start()

    def _print(self, text: str) -> None:
        with self._lock:
            self.stream.write(f"[{_clock(self.started)}] {text}\n")
            self.stream.flush()

    def line(self, text: str) -> None:
        self._print(text)

    def warn(self, text: str) -> None:
        self._print(f"warning: {text}")

    def _opened(self, stage: Stage) -> None:
        super()._opened(stage)
        self._last_line[id(stage)] = time.monotonic()

    def _stage_done(self, stage: Stage, seconds: float, note: str) -> None:
        super()._stage_done(stage, seconds, note)
        self._print(f"{stage.name} done in {format_duration(seconds)}" + (f" ({note})" if note else ""))

    def _steps_updated(self, steps: Steps) -> None:
        now = time.monotonic()
        with self._lock:
            first = id(steps) not in self._shown
            finished = steps.total is not None and steps.done_count >= steps.total
            if first or finished or now - self._last_line.get(id(steps), 0.0) >= self.interval_s:
                self._shown.add(id(steps))
                self._last_line[id(steps)] = now
                self._print(f"{steps.name}: {steps.describe()}")

    def _beat(self) -> None:
        while not self._stop.wait(min(1.0, self.heartbeat_s / 2)):
            now = time.monotonic()
            with self._lock:
                quiet = [s for s in self._open if now - self._last_line.get(id(s), now) >= self.heartbeat_s]
                for stage in quiet:
                    self._last_line[id(stage)] = now
                    self._print(f"{stage.name}: still running ({format_duration(now - stage.started)})")

    def close(self) -> None:
        super().close()
        self._stop.set()


def _clock(since: float) -> str:
    minutes, secs = divmod(int(time.monotonic() - since), 60)
    return f"{minutes:02d}:{secs:02d}"
