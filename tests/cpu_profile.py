"""CPU seconds by test module, for speed work (docs/test-speed.md): opt-in with
`FACTORY_TEST_CPU_PROFILE=FILE` (e.g. `make test PYTEST_ARGS=...` with it exported).

Each pytest process (each xdist worker) moves itself into a cgroup of its own (cgroup v1
`cpuacct`, or v2's `cpu.stat`), so every process it starts is counted there too, even one
that leaves its parent: moto's server, the build hosts moto starts at RunInstances, their
sshd, dockerd and Ansible's modules, Packer and ansible-playbook. A worker runs one module
at a time (`--dist loadfile`), so the cgroup's usage between a module's first setup and its
last teardown is that module's CPU, its local cloud's included. Each worker appends one
JSON line per module to FILE: module, CPU seconds, wall seconds. Without root or a cpuacct
hierarchy the plugin says so and counts nothing. Not a test: nothing here asserts a time.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

V1 = Path("/sys/fs/cgroup/cpuacct")
V2 = Path("/sys/fs/cgroup/unified")


def _usage_reader(group: Path):
    if (group / "cpuacct.usage").exists():
        return lambda: int((group / "cpuacct.usage").read_text()) / 1e9
    def v2() -> float:
        for line in (group / "cpu.stat").read_text().splitlines():
            if line.startswith("usage_usec "):
                return int(line.split()[1]) / 1e6
        return 0.0
    return v2


class CpuProfile:
    def __init__(self, out: Path):
        self.out = out
        self.usage = None
        self.module: str | None = None
        self.started = (0.0, 0.0)
        self.group: Path | None = None
        for root in (V1, V2):
            if root.is_dir() and os.access(root, os.W_OK):
                group = root / f"factory-tests-{os.getpid()}"
                try:
                    group.mkdir(exist_ok=True)
                    (group / "cgroup.procs").write_text(str(os.getpid()))
                except OSError:
                    continue
                self.usage, self.group = _usage_reader(group), group
                break

    def _close(self) -> None:
        if self.module is None or self.usage is None:
            return
        cpu, wall = self.usage() - self.started[0], time.monotonic() - self.started[1]
        with self.out.open("a") as f:
            f.write(json.dumps({"module": self.module, "cpu_s": round(cpu, 1), "wall_s": round(wall, 1),
                                "worker": os.environ.get("PYTEST_XDIST_WORKER", "main")}) + "\n")
        self.module = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        module = item.nodeid.split("::", 1)[0]
        if module != self.module:
            self._close()
            if self.usage is not None:
                self.module, self.started = module, (self.usage(), time.monotonic())

    def pytest_unconfigure(self, config):
        """The last module's line, then the cgroup goes: this process moves back to the
        root group and the group is removed (when something it started still runs, the
        group stays; it is empty once that ends, and harmless)."""
        self._close()
        if self.group is not None:
            try:
                (self.group.parent / "cgroup.procs").write_text(str(os.getpid()))
                self.group.rmdir()
            except OSError:
                pass


def register(config) -> None:
    out = os.environ.get("FACTORY_TEST_CPU_PROFILE")
    if out:
        config.pluginmanager.register(CpuProfile(Path(out)), "factory-cpu-profile")
