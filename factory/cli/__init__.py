"""The `factory` command line: thin commands over the core in `factory.*`.

Each command lives in its own module and adds itself to `app`; this module only imports
them in the order `--help` lists them (the data's order: spec -> measure -> size -> render -> bake
-> register -> show), which is why the imports are not sorted.
"""
# ruff: noqa: I001

from factory.cli.app import app
from factory.cli import validate as _validate  # noqa: F401
from factory.cli import measure as _measure  # noqa: F401
from factory.cli import size as _size  # noqa: F401
from factory.cli import instance_storage as _instance_storage  # noqa: F401
from factory.cli import render as _render  # noqa: F401
from factory.cli import lock as _lock  # noqa: F401
from factory.cli import bake as _bake  # noqa: F401
from factory.cli import distribute as _distribute  # noqa: F401
from factory.cli import register as _register  # noqa: F401
from factory.cli import status as _status  # noqa: F401
from factory.cli import show as _show  # noqa: F401
from factory.cli import iam as _iam  # noqa: F401
from factory.cli import local as _local  # noqa: F401


def main() -> None:
    app()
