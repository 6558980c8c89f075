"""A loopback HTTP mirror serving the stand-in Miniconda installer to the build host.

The real installer's download site cannot be reached offline. The local cloud serves
`factory/local/builder/files/Miniconda3-standin-Linux.sh` instead, and passes its URL and sha256
to the `miniconda_awscli` role, which downloads and verifies it exactly as it does the
real, pinned installer. The server is Python's `http.server` in its own session, so it
outlives the command that started it (`factory local up` ... `factory local down`).
Starting a mirror also makes sure this machine's stand-in conda package cache holds the
role's pinned AWS CLI (`conda_pkgs.ensure()`), which every bake then unpacks instead of
running pip.

    mirror = Mirror.start(Path(".factory/mirror"))
    mirror.installer_url, mirror.installer_sha256
    mirror.stop()
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from factory.errors import LocalCloudError
from factory.local.procs import free_port, stop_group

STANDIN_INSTALLER = "Miniconda3-standin-Linux.sh"
STATE_FILE = "mirror.json"


def standin_installer() -> Path:
    """The stand-in installer shipped with factory (package data)."""
    try:
        path = Path(str(resources.files("factory.local.builder") / "files" / STANDIN_INSTALLER))
    except (ModuleNotFoundError, TypeError):
        path = Path(__file__).parent / "files" / STANDIN_INSTALLER
    if not path.is_file():
        path = Path(__file__).parent / "files" / STANDIN_INSTALLER
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Mirror:
    """A running mirror: what it serves and where."""

    directory: Path  # the served files live in directory/www
    port: int
    pid: int
    installer_sha256: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def installer_url(self) -> str:
        return f"{self.url}/{STANDIN_INSTALLER}"

    @classmethod
    def start(cls, directory: Path, port: int | None = None, timeout: float = 10.0) -> Mirror:
        directory = Path(directory).absolute()
        existing = cls.load(directory)
        if existing is not None and existing.alive():
            raise LocalCloudError(f"a mirror already serves from {directory} on port {existing.port}; stop it first")
        www = directory / "www"
        if www.exists():
            shutil.rmtree(www)
        www.mkdir(parents=True)
        target = www / STANDIN_INSTALLER
        shutil.copyfile(standin_installer(), target)
        os.chmod(target, 0o644)
        from factory.local.builder import conda_pkgs

        conda_pkgs.ensure()
        port = port or free_port()
        log = open(directory / "mirror.log", "ab")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(www), str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )
        finally:
            log.close()
        mirror = cls(directory=directory, port=port, pid=proc.pid, installer_sha256=sha256_file(target))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise LocalCloudError(f"the local mirror exited at start (status {proc.returncode}); see {directory / 'mirror.log'}")
            if mirror.alive():
                mirror._save()
                return mirror
            time.sleep(0.05)
        mirror.stop()
        raise LocalCloudError(f"the local mirror did not answer on {mirror.url} within {timeout:.0f}s")

    @classmethod
    def load(cls, directory: Path) -> Mirror | None:
        f = Path(directory) / STATE_FILE
        if not f.exists():
            return None
        data = json.loads(f.read_text())
        data["directory"] = Path(data["directory"])
        return cls(**data)

    def alive(self) -> bool:
        try:
            urllib.request.urlopen(self.installer_url, timeout=1).close()
            return True
        except OSError:
            return False

    def stop(self) -> None:
        stop_group(self.pid)
        (self.directory / STATE_FILE).unlink(missing_ok=True)

    def _save(self) -> None:
        data = {"directory": str(self.directory), "port": self.port, "pid": self.pid,
                "installer_sha256": self.installer_sha256}
        tmp = self.directory / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.directory / STATE_FILE)
