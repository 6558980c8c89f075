"""Find the data factory ships: the spec schema, the Packer templates, the Ansible content.

In an installed wheel they are package data (`factory.schemas`, `factory.packer`,
`factory.ansible`, mapped from the repository's top-level folders in pyproject.toml);
in a checkout or an editable install they are the top-level folders themselves.
"""

from __future__ import annotations

from pathlib import Path

from factory.errors import FactoryError

_REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir(name: str) -> Path:
    """The folder holding `schemas`, `packer` or `ansible`."""
    from importlib.resources import files

    try:
        found = files(f"factory.{name}")
        path = Path(str(found))
        if path.is_dir():
            return path
    except (ModuleNotFoundError, TypeError):
        pass
    path = _REPO_ROOT / name
    if path.is_dir():
        return path
    raise FactoryError(f"factory's `{name}` folder is missing from this installation; reinstall factory")
