"""Exit codes and one-line errors, the same for every `maskunet` command.

0 success, 1 failure at run time, 2 invalid input (bad config value or key, bad flag, missing
file, a base or dataset that cannot be used), 3 refused by a gate (`maskunet promote`). The terminal gets one line naming the field or
file; tracebacks go to the command's log file (or the terminal with --verbose).
"""
import sys

import click

EXIT_OK, EXIT_FAILURE, EXIT_INVALID_INPUT, EXIT_REFUSED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class InvalidInput(click.ClickException):
    """Bad input: one line naming the field or file, exit code 2."""

    exit_code = EXIT_INVALID_INPUT


class RunFailure(click.ClickException):
    """A failure at run time (training, a service, the data): one line, exit code 1."""

    exit_code = EXIT_FAILURE


class Interrupted(click.ClickException):
    """Stopped by the user with state saved: one line saying how to continue, exit code 130."""

    exit_code = EXIT_INTERRUPTED


def invalid_input_types() -> tuple[type, ...]:
    """Exceptions that mean the user's input is wrong, not that running it failed."""
    from pydantic import ValidationError

    from maskunet_platform.config import ConfigError
    from maskunet_platform.data.reader import SchemaError
    from maskunet_platform.data.uri import DataSourceError
    from maskunet_platform.registry.files import ModelUriError
    from maskunet_platform.registry.gate import GateSpecError
    from maskunet_platform.train.base_check import BaseModelError
    from maskunet_platform.train.runs import RunSelectionError

    return (ConfigError, ValidationError, SchemaError, DataSourceError, BaseModelError, RunSelectionError,
            ModelUriError, GateSpecError, click.BadParameter)


def one_line(error: BaseException) -> str:
    """The error's message on one line (multi-line messages are joined with '; ')."""
    if isinstance(error, click.ClickException):
        text = error.format_message()
    else:
        from pydantic import ValidationError

        if isinstance(error, ValidationError):
            text = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in error.errors())
        else:
            text = str(error) or type(error).__name__
    parts = [p.strip() for p in text.strip().splitlines() if p.strip()]
    joined = parts[0] if parts else type(error).__name__
    for part in parts[1:]:
        joined += (" " if joined.endswith(":") else "; ") + part
    return joined


class MaskunetGroup(click.Group):
    """A click group whose errors are one line on stderr: `error: <message>`, with the exit
    code of the error (click's own usage errors, e.g. an unknown flag, exit 2)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except click.UsageError as e:
            hint = f" (see '{e.ctx.command_path} -h')" if e.ctx is not None else ""
            _fail(f"{one_line(e)}{hint}", e.exit_code)
        except click.ClickException as e:
            _fail(one_line(e), e.exit_code)
        except click.Abort:
            _fail("interrupted", EXIT_INTERRUPTED)
        except BrokenPipeError:  # `maskunet ... | head`: the reader left; nothing more to say
            sys.exit(EXIT_FAILURE)
        sys.exit(result if isinstance(result, int) else EXIT_OK)


def _fail(message: str, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)
