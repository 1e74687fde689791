"""`maskunet` command line: one group, subcommands registered from their modules."""
import click

from maskunet_platform.commands.model import generate, init_base
from maskunet_platform.commands.data import data
from maskunet_platform.commands.train import evaluate, train


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Train, sweep, promote and serve MaskUNet models."""


main.add_command(init_base)
main.add_command(generate)
main.add_command(data)
main.add_command(train)
main.add_command(evaluate)

if __name__ == "__main__":
    main()
