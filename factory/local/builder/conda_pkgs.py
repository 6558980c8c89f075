"""The stand-in conda's package cache: the AWS CLI built once per machine, unpacked by every bake.

Real conda does not build what it installs: it downloads prebuilt packages from its channel
into `PREFIX/pkgs` and unpacks them. The stand-in conda (in
`files/Miniconda3-standin-Linux.sh`) installs the real AWS CLI from PyPI with pip, which
costs a bake about 5 CPU-seconds (awscli and botocore are 9,644 files). So this machine
keeps what that pip install leaves, one tar per install, in `/var/cache/factory-local/conda-pkgs`
(`$FACTORY_STANDIN_CONDA_PKGS`), and the stand-in conda unpacks it when it holds an entry for
exactly its install. The key is the stand-in's own (`sh Miniconda3-standin-Linux.sh -k
awscli==X`): the requested release, the interpreter (version, path, bytes), pip's version
and the stand-in's format. The build host's root is this machine's `/` under an overlay,
so the cache is visible there read-only: what a bake unpacks lands in its own upper
directory like any install, and the cache itself never enters an AMI's tree.

`ensure()` fills an entry by running the stand-in itself (installer into a temporary
prefix, then `conda install` with `FACTORY_STANDIN_CONDA_PUBLISH=1`), under a lock so that
parallel local clouds (xdist workers) build it once; the entry appears by a hard link of
a finished temporary file, so a reader never sees half of one. When it cannot be built
(no network, no write access), bakes fall back to pip as before.

    ensure("1.32.27")   # Path of the entry, or None
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

DEFAULT_DIR = Path("/var/cache/factory-local/conda-pkgs")  # the stand-in's default as well
ENV_DIR = "FACTORY_STANDIN_CONDA_PKGS"
_VERSION_LINE = re.compile(r'^miniconda_awscli_awscli_version:\s*"?([0-9A-Za-z.]+)"?\s*$', re.M)


def pkgs_dir() -> Path:
    return Path(os.environ.get(ENV_DIR) or DEFAULT_DIR)


def pinned_awscli_version() -> str | None:
    """The miniconda_awscli role's pinned AWS CLI release (what every bake installs)."""
    from factory.resources import data_dir

    try:
        text = (data_dir("ansible") / "roles" / "miniconda_awscli" / "defaults" / "main.yml").read_text()
    except OSError:
        return None
    m = _VERSION_LINE.search(text)
    return m.group(1) if m else None


def key(version: str, installer: Path | None = None) -> str:
    """The stand-in's cache key for `conda install awscli=VERSION`."""
    from factory.local.builder.mirror import standin_installer

    out = subprocess.run(["sh", str(installer or standin_installer()), "-k", f"awscli=={version}"],
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.strip()


def ensure(version: str | None = None, directory: Path | None = None, timeout: float = 600) -> Path | None:
    """The cache entry for `conda install awscli=VERSION` (the role's pin by default), built if missing."""
    from factory.local.builder.mirror import standin_installer

    version = version or pinned_awscli_version()
    if not version:
        return None
    directory = Path(directory or pkgs_dir())
    installer = standin_installer()
    try:
        entry = directory / f"{key(version, installer)}.tar"
        if entry.is_file():
            return entry
        directory.mkdir(parents=True, exist_ok=True)
        with open(directory / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if entry.is_file():  # another local cloud built it while this one waited
                return entry
            work = Path(tempfile.mkdtemp(prefix=".build-", dir=directory))
            try:
                prefix = work / "prefix"
                env = dict(os.environ, FACTORY_STANDIN_CONDA_PKGS=str(directory), FACTORY_STANDIN_CONDA_PUBLISH="1")
                subprocess.run(["sh", str(installer), "-b", "-p", str(prefix)], env=env,
                               capture_output=True, timeout=timeout, check=True)
                subprocess.run([str(prefix / "bin" / "conda"), "install", "-y", f"awscli=={version}"], env=env,
                               capture_output=True, timeout=timeout, check=True)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        return entry if entry.is_file() else None
    except (OSError, subprocess.SubprocessError):
        return None
