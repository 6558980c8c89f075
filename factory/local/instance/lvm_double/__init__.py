"""A double of the LVM commands the grow pool runs, for machines without device-mapper.

The grow pool's `lvm-xfs` backend (ansible/roles/grow_agent/files/factory_grow/pool.py) is
what every AWS instance runs: pvcreate, vgcreate, lvcreate, mkfs.xfs on the logical volume,
and to grow pvcreate, vgextend, vgs, lvextend, xfs_growfs. lvm2 activates a logical volume
through device-mapper; a kernel without it (this machine's, `dmsetup targets` fails) cannot
run lvcreate at all. Where device-mapper is missing this double stands in for lvm2's
commands, so the pool's code runs unchanged, byte for byte the path AWS runs:

- same command names, the arguments the pool passes, the report columns it parses, and
  lvm2's messages and exit status (5) for what lvm2 refuses: a device already in a volume
  group, a volume group or logical volume name in use, more extents than are free;
- the sizes lvm2 gives: each PV's data starts 1 MiB in (the label and metadata area,
  aligned to 1 MiB), the volume group's extents are 4 MiB, a PV holds
  floor((size - 1 MiB) / 4 MiB) of them; checked against real lvm2 by the tests;
- each PV gets a real lvm2 label (the real `pvcreate` writes it; it needs no
  device-mapper), so `blkid` finds `LVM2_member` as on AWS;
- an active logical volume is a loop device over a sparse file of exactly the LV's size
  (extents x 4 MiB), linked at /dev/VG/LV and /dev/mapper/VG-LV; lvextend grows the file
  and the loop device (`losetup -c`), online, as a dm-linear table reload does. The
  data is NOT on the PVs' loop devices (without device-mapper nothing can concatenate
  them): sizes, extents and refusals are lvm2's, the bytes live in the LV's own file;
- the state (PVs, VGs, LVs) is one JSON file in the double's folder, locked per command.

    from factory.local.instance import lvm_double
    if lvm_double.device_mapper_missing():
        env = lvm_double.install(bin_dir, state_dir)   # PATH with the double's commands first
    ...
    lvm_double.release(state_dir)   # detach what the double attached (after unmounting)

Where device-mapper exists nothing is installed: real lvm2 runs the same code and tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

COMMANDS = ("pvcreate", "vgcreate", "vgextend", "lvcreate", "lvextend", "vgchange", "vgremove", "pvs", "vgs", "lvs")
STATE_ENV = "FACTORY_LVM_DOUBLE_STATE"  # the folder holding state.json and the LVs' files
BIN_ENV = "FACTORY_LVM_DOUBLE_BIN"  # the double's own bin folder (skipped when looking for the real pvcreate)
MAPPER_CONTROL = "/dev/mapper/control"


def device_mapper_missing() -> str | None:
    """Why lvm2 cannot activate a logical volume here, or None when device-mapper works."""
    try:
        fd = os.open(MAPPER_CONTROL, os.O_RDWR)
    except OSError as exc:
        return f"this kernel has no device-mapper ({MAPPER_CONTROL}: {exc.strerror})"
    os.close(fd)
    return None


def repo_root() -> Path:
    """The folder holding the `factory` package (the double's commands import it from there)."""
    return Path(__file__).resolve().parents[4]


def install(bin_dir: Path, state_dir: Path, *, seen_bin_dir: str | None = None, seen_state_dir: str | None = None,
            python: str = sys.executable) -> dict[str, str]:
    """Write the double's commands into `bin_dir` (one small script each) and return the
    environment additions that put them first on PATH. `seen_bin_dir`, `seen_state_dir`:
    both folders as the commands will see them (inside a local instance's root), when not
    where they are written."""
    bin_dir, state_dir = Path(bin_dir), Path(state_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    state = seen_state_dir or str(state_dir)
    seen_bin = seen_bin_dir or str(bin_dir)
    for name in COMMANDS:
        script = bin_dir / name
        script.write_text(
            "#!/bin/sh\n"
            "# factory's LVM double (factory/local/instance/lvm_double): lvm2 without device-mapper\n"
            f"{STATE_ENV}={state} {BIN_ENV}={seen_bin} PYTHONPATH={repo_root()} exec {python} -m factory.local.instance.lvm_double.lvm {name} \"$@\"\n"
        )
        script.chmod(0o755)
    return {"PATH": f"{seen_bin}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"}


def release(state_dir: Path) -> list[str]:
    """Detach every loop device the double attached for a logical volume (the instance's
    `vgchange -an` at shutdown); returns what could not be detached."""
    path = Path(state_dir) / "state.json"
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    problems = []
    for name, lv in state.get("lvs", {}).items():
        loop = lv.get("loop")
        if not loop:
            continue
        done = subprocess.run(["losetup", "-d", loop], capture_output=True, text=True)
        if done.returncode != 0 and "No such device" not in done.stderr:
            problems.append(f"logical volume {name}'s loop device {loop}: {done.stderr.strip()}")
        lv["loop"] = None
        for link in (f"/dev/{name}", f"/dev/mapper/{name.replace('/', '-')}"):
            if os.path.islink(link) and os.readlink(link) == loop:
                os.unlink(link)
    path.write_text(json.dumps(state, indent=1))
    return problems


LOCK_FILE = "/run/lock/factory-lvm-pool.lock"


class exclusive:
    """Holds the machine-wide lock for a pool named `factory` in this machine's /dev (its
    /dev/factory/docker link, or real lvm2's volume group of that name): tests and rigs on
    this machine's own /dev take turns. A local instance has a /dev of its own and needs none."""

    def __enter__(self) -> exclusive:
        import fcntl

        os.makedirs(os.path.dirname(LOCK_FILE), exist_ok=True)
        self._f = open(LOCK_FILE, "w")
        fcntl.flock(self._f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()
