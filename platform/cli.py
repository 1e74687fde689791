"""`maskunet` command line: one group, subcommands registered from their modules.

Console output (progress, summaries, --json, log files, exit codes) is owned by
`maskunet_platform.console`; every command runs inside one of its sessions."""
import click

from maskunet_platform.commands.bench import bench
from maskunet_platform.commands.compare import compare
from maskunet_platform.commands.data import data
from maskunet_platform.commands.infra import infra
from maskunet_platform.commands.jobs import jobs, submit
from maskunet_platform.commands.model import generate, init_base
from maskunet_platform.commands.pretrain import pretrain_base
from maskunet_platform.commands.registry import promote, registry
from maskunet_platform.commands.sweep import sweep
from maskunet_platform.commands.serve import serve_command
from maskunet_platform.commands.train import evaluate, train
from maskunet_platform.commands.ui import ui
from maskunet_platform.console.errors import MaskunetGroup
from maskunet_platform.console.exit import exit_without_teardown


@click.group(cls=MaskunetGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train, sweep, promote and serve MaskUNet models.

    Exit codes: 0 success, 1 failure at run time, 2 invalid input. Library output goes to a
    log file named in each command's summary; -v shows everything, -q only the summary."""


main.add_command(init_base)
main.add_command(generate)
main.add_command(pretrain_base)
main.add_command(data)
main.add_command(train)
main.add_command(evaluate)
main.add_command(ui)
main.add_command(bench)
main.add_command(registry)
main.add_command(promote)
main.add_command(sweep)
main.add_command(serve_command)
main.add_command(compare)
main.add_command(submit)
main.add_command(jobs)
main.add_command(infra)



def run() -> None:
    """The `maskunet` program (console script and `python -m maskunet_platform.cli`): the
    command group, then an exit without interpreter teardown (console/exit.py). Tests call
    `main` in-process instead, which only raises SystemExit."""
    try:
        main()
    except SystemExit as done:
        exit_without_teardown(done.code)
    exit_without_teardown(0)


if __name__ == "__main__":
    run()
