"""Where output goes: the terminal gets the command's own lines, everything else a log file.

In a real `maskunet` process, file descriptors 1 and 2 are pointed at the log file, so Ray's
worker-log forwarding, C++ warnings, library `print`s and progress bars, and the output of any
child process land there whoever writes them; the console keeps duplicates of the original
descriptors for its own lines. Called in-process (click's CliRunner, tests) only Python-level
streams are swapped, and everything is restored afterwards. With --verbose nothing is hidden.
"""
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Callable, TextIO

DEFAULT_LOG_DIR = "~/.cache/maskunet/logs"
# Set before libraries are imported (and inherited by a local Ray's workers): progress bars
# would only fill the log file with carriage-return redraws.
QUIET_LIBRARY_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
# Loggers whose warnings matter to the user; every other library's go to the log file only.
OWN_LOGGERS = ("maskunet", "maskunet_platform")


def default_log_path(command: str) -> Path:
    """`$MASKUNET_LOG_DIR` (default ~/.cache/maskunet/logs)/<command>-<time>-<pid>.log"""
    root = Path(os.environ.get("MASKUNET_LOG_DIR") or DEFAULT_LOG_DIR).expanduser()
    return root / f"{command.replace(' ', '-')}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


def is_real_process() -> bool:
    """True when the command owns this process's stdout/stderr (not CliRunner, not pytest capture)."""
    try:
        return sys.stdout is sys.__stdout__ and sys.stderr is sys.__stderr__ and sys.stdout.fileno() == 1
    except (AttributeError, OSError, ValueError):
        return False


class LogFile:
    """The command's log file. It can move once the run's own directory is known."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.stream = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")
        self.handler = logging.StreamHandler(self.stream)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self._fds_redirected = False

    def redirect_fds(self) -> None:
        """Point fds 1 and 2 at this file (children and C code included)."""
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        for fd in (1, 2):
            os.dup2(self.stream.fileno(), fd)
        self._fds_redirected = True

    def move_to(self, directory: Path) -> Path:
        """Move the file into `directory`, keeping everything that writes to it writing to it."""
        target = Path(directory).expanduser() / self.path.name
        if target == self.path:
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        self.stream.flush()
        try:
            os.replace(self.path, target)  # same filesystem: open descriptors follow the file
        except OSError:
            shutil.copyfile(self.path, target)
            self.path.unlink(missing_ok=True)
            self._reopen(target)
        self.path = target
        return target

    def _reopen(self, target: Path) -> None:
        old, self.stream = self.stream, open(target, "a", buffering=1, encoding="utf-8", errors="replace")
        self.handler.setStream(self.stream)
        if self._fds_redirected:
            self.redirect_fds()
        old.close()


class Routing:
    """Installs the routing of one command's output and undoes it (in-process) at the end."""

    def __init__(self, log: LogFile, verbose: bool, warn: Callable[[str], None]):
        self.log, self.verbose, self.warn = log, verbose, warn
        self.real_process = is_real_process()
        self._saved: dict = {}

    def start(self) -> tuple[TextIO, TextIO]:
        """Install the routing; returns the (stdout, stderr) the console writes to."""
        if self.real_process:
            out = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8", errors="replace")
            err = os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
            if not self.verbose:
                for key, value in QUIET_LIBRARY_ENV.items():
                    os.environ.setdefault(key, value)
                self.log.redirect_fds()
        else:
            out, err = sys.stdout, sys.stderr
            if not self.verbose:
                self._saved["streams"] = sys.stdout, sys.stderr
                sys.stdout = sys.stderr = self.log.stream
        self._install_logging(err)
        return out, err

    def _install_logging(self, err: TextIO) -> None:
        root = logging.getLogger()
        self._saved["root_level"] = root.level
        root.setLevel(logging.INFO)
        root.addHandler(self.log.handler)
        console = _ConsoleHandler(self.warn) if not self.verbose else logging.StreamHandler(err)
        console.setLevel(logging.INFO if self.verbose else logging.WARNING)
        if not self.verbose:
            console.addFilter(lambda record: record.name.split(".")[0] in OWN_LOGGERS)
        root.addHandler(console)
        self._saved["console_handler"] = console
        logging.captureWarnings(True)  # library warnings -> "py.warnings" -> the log file

    def stop(self) -> None:
        root = logging.getLogger()
        root.removeHandler(self.log.handler)
        root.removeHandler(self._saved.pop("console_handler"))
        root.setLevel(self._saved.pop("root_level"))
        logging.captureWarnings(False)
        if "streams" in self._saved:
            sys.stdout, sys.stderr = self._saved.pop("streams")
        if self.real_process:
            # fds 1/2 stay on the log file: what Ray and atexit hooks print while the
            # interpreter shuts down belongs there too.
            self.log.stream.flush()
        else:
            self.log.stream.close()


class _ConsoleHandler(logging.Handler):
    """Our own warnings, shown as one line through the console (above any live progress)."""

    def __init__(self, warn: Callable[[str], None]):
        super().__init__()
        self._warn = warn

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._warn(record.getMessage().splitlines()[0])
        except Exception:  # noqa: BLE001 - a console problem must not break the command
            self.handleError(record)

