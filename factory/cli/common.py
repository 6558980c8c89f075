"""What every command shares: the error boundary, JSON output, where specs live.

Kept free of heavy imports (boto3, ansible, moto): `factory --help` must start fast.
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Any, Callable, TypeVar

import typer

from factory.errors import FactoryError

F = TypeVar("F", bound=Callable[..., Any])

DEFAULT_SPECS_DIR = Path("specs")


def handle_errors(fn: F) -> F:
    """Print a FactoryError's message (no traceback) and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from factory import aws

        # Every AWS call the command makes says which command made it (its user agent), so
        # the local cloud's call log proves `factory iam-policy` against what really runs.
        previous = aws.set_command(fn.__name__.replace("_", "-"))
        try:
            return fn(*args, **kwargs)
        except FactoryError as exc:
            err(exc.message)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err("interrupted")
            raise typer.Exit(130) from None
        finally:
            aws.set_command(previous)

    return wrapper  # type: ignore[return-value]


def err(message: str) -> None:
    print(f"factory: {message}" if not message.startswith("factory:") else message, file=sys.stderr)


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=True, default=str))


def stdout_console():
    from rich.console import Console

    return Console()
