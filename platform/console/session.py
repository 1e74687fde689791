"""One command's console: the -v/-q/--json options, the log file, progress, the closing
summary and the exit code. Every `maskunet` command runs inside one session:

    @click.command()
    @console_command("data inspect")
    def inspect(session, uri, ...):
        with session.progress.stage("reading"):
            ...
        session.finish(Summary("...").add("rows in:", n), next_step=None)
"""
import functools
import json
import os
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, TextIO

import click

from maskunet_platform.console.errors import (EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_INVALID_INPUT, invalid_input_types,
                                               one_line)
from maskunet_platform.console.logfile import LogFile, Routing, default_log_path
from maskunet_platform.console.progress import PlainProgress, Progress
from maskunet_platform.console.summary import Summary


@dataclass
class Session:
    command: str
    verbose: bool
    quiet: bool
    as_json: bool
    out: TextIO  # the terminal's stdout (the --json object goes here and nothing else)
    err: TextIO  # the terminal's stderr
    log: LogFile
    progress: Progress

    def line(self, text: str) -> None:
        """An informational line (not in quiet mode; on stderr with --json)."""
        if not self.quiet:
            self.progress.line(text)

    def warn(self, text: str) -> None:
        if not self.quiet:
            self.progress.warn(text)

    def move_log(self, directory: str | Path) -> Path:
        """Keep the log with the run it belongs to, once that run's folder is known."""
        return self.log.move_to(Path(directory).expanduser())

    def finish(self, summary: Summary, next_step: Optional[str] = None) -> None:
        self.progress.close()
        if self.as_json:
            self.out.write(json.dumps(summary.data, default=str) + "\n")
        else:
            total = time.monotonic() - self.progress.started
            lines = summary.render(self.progress.timings, str(self.log.path), next_step, total)
            self.out.write("\n".join(lines) + "\n")
        self.out.flush()


def make_progress(stream: TextIO, quiet: bool, verbose: bool = False) -> Progress:
    """Live display on a terminal, plain lines elsewhere (and with --verbose, whose library
    output would tear a redrawn display), nothing in quiet mode."""
    if quiet:
        return Progress()
    if _is_terminal(stream) and not verbose:
        from maskunet_platform.console.live import LiveProgress

        return LiveProgress(stream)
    return PlainProgress(stream)


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


@contextmanager
def open_session(command: str, verbose: bool = False, quiet: bool = False, as_json: bool = False):
    """Route output, yield the Session; map exceptions to one line and an exit code."""
    if verbose and quiet:
        raise click.UsageError("-v/--verbose and -q/--quiet exclude each other")
    log = LogFile(default_log_path(command))
    holder: list[Session] = []
    routing = Routing(log, verbose, warn=lambda text: holder[0].warn(text) if holder else None)
    out, err = routing.start()
    session = Session(command, verbose, quiet, as_json, out, err, log,
                      make_progress(err if as_json else out, quiet, verbose))
    holder.append(session)
    try:
        yield session
    except click.exceptions.Exit:
        raise
    except KeyboardInterrupt:
        _report(session, "interrupted", None, EXIT_INTERRUPTED)
    except click.ClickException as e:  # InvalidInput, RunFailure, click's own: their message says it all
        _report(session, one_line(e), None, e.exit_code)
    except Exception as e:  # noqa: BLE001 - every failure becomes one line and an exit code
        if isinstance(e, invalid_input_types()):
            _report(session, one_line(e), e, EXIT_INVALID_INPUT)
        _report(session, f"{one_line(e)} (details: {log.path})", e, EXIT_FAILURE)
    finally:
        session.progress.close()
        routing.stop()


def _report(session: Session, message: str, error: Optional[BaseException], code: int) -> None:
    """One line on the terminal's stderr, the traceback in the log (and on the terminal with -v)."""
    session.progress.close()
    if error is not None:
        text = "".join(traceback.format_exception(error))
        session.log.stream.write(text)
        session.log.stream.flush()
        if session.verbose:
            session.err.write(text)
    session.err.write(f"error: {message}\n")
    session.err.flush()
    raise click.exceptions.Exit(code)


def console_command(command: str, results: bool = True):
    """Decorator for a click command: adds -v/--verbose, -q/--quiet (and --json when the
    command produces results) and calls the function with a Session first."""

    def decorate(fn):
        @functools.wraps(fn)
        def run(*args, verbose: bool = False, quiet: bool = False, as_json: bool = False, **kwargs):
            with open_session(command, verbose, quiet, as_json) as session:
                return fn(session, *args, **kwargs)

        if results:
            run = click.option("--json", "as_json", is_flag=True,
                               help="Print one JSON object on stdout and nothing else there.")(run)
        run = click.option("-q", "--quiet", is_flag=True, help="Only the summary and errors.")(run)
        return click.option("-v", "--verbose", is_flag=True,
                            help="Show everything: library logs, progress bars, tracebacks.")(run)

    return decorate
