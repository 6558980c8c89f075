"""The typer application object every command module adds itself to."""

import typer

app = typer.Typer(
    name="factory",
    help="Turn a task spec into a right-sized AWS Batch image, launch template, compute environment and queue.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
