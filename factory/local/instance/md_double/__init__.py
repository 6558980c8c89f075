"""A double of the mdadm commands the instance-store boot unit runs, for kernels without md.

The instance-store boot unit (ansible/roles/instance_store/files/factory_instance_store.py)
RAID0s an instance's NVMe store disks when there are several: `mdadm --stop` of an array
left from before, `mdadm --create ARRAY --run --level=0 --metadata=1.2 --name=N
--raid-devices=K DISK...`, then `mdadm --detail --export ARRAY`, whose MD_LEVEL and
MD_DEVICES it checks. md needs the kernel's md driver; this machine's kernel has none
(/proc/mdstat is absent and `mdadm --create` fails). Where md is missing this double stands
in for mdadm, so the boot unit's code runs unchanged:

- the same command, the arguments the unit passes (others refused with exit 2, naming the
  double), mdadm's messages on stderr and its exit status 1 for what mdadm refuses: a disk
  that does not exist or is not a block device, a disk already in an active array, a name
  already active, --raid-devices not matching the disks listed, a level other than 0;
- the sizes md gives (mdadm 4.x super1.c `validate_geometry1`, the Linux kernel's
  drivers/md/raid0.c `create_strip_zones`): metadata 1.2 puts each member's data at
  data_offset = ROUND_UP(12 KiB + bitmap space + headroom, 1 MiB), the headroom 128 MiB
  halved while 1024 x headroom exceeds the disk; the bitmap space 128 KiB above 200 GiB, 64
  KiB above 8 GiB, else 4 KiB; raid0 rounds each member's data down to whole chunks (512
  KiB, mdadm's default) and the array is their sum;
- an active array is a loop device over a sparse file of exactly the array's size, linked
  at /dev/md/NAME and /dev/mdN (N from 127 down, as mdadm picks for a named array). The
  data is NOT striped over the members' loop devices (without md nothing can): sizes,
  names and refusals are md's, the bytes live in the array's own file. XFS and overlay2 on
  it are real;
- the state (arrays) is one JSON file in the double's folder, locked per command.

    from factory.local.instance import md_double
    if md_double.md_missing():
        md_double.install(bin_dir, state_dir)   # `mdadm` first on PATH
    ...
    md_double.release(state_dir)   # detach what the double attached (after unmounting)

Where md exists (and mdadm is installed) nothing is installed: real mdadm runs the same code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

STATE_ENV = "FACTORY_MD_DOUBLE_STATE"
MDSTAT = "/proc/mdstat"


def md_missing() -> str | None:
    """Why mdadm cannot make an array here, or None when the kernel has md."""
    if os.path.exists(MDSTAT):
        return None
    return f"this kernel has no md driver ({MDSTAT} is absent)"


def repo_root() -> Path:
    return Path(__file__).resolve().parents[4]


def install(bin_dir: Path, state_dir: Path, *, seen_state_dir: str | None = None, python: str = sys.executable) -> None:
    """Write the double's `mdadm` into `bin_dir`; `seen_state_dir`: the state folder as the
    command will see it (inside a local instance's root), when not where it is."""
    bin_dir, state_dir = Path(bin_dir), Path(state_dir)
    bin_dir.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "mdadm"
    script.write_text(
        "#!/bin/sh\n"
        "# factory's md double (factory/local/instance/md_double): mdadm without the md driver\n"
        f"{STATE_ENV}={seen_state_dir or state_dir} PYTHONPATH={repo_root()} exec {python} -m factory.local.instance.md_double.mdadm \"$@\"\n"
    )
    script.chmod(0o755)


def release(state_dir: Path | None) -> list[str]:
    """Detach every loop device the double attached for an array (the instance's shutdown);
    returns what could not be detached."""
    if state_dir is None:
        return []
    path = Path(state_dir) / "state.json"
    try:
        state = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return []
    problems = []
    for name, array in state.get("arrays", {}).items():
        loop = array.get("loop")
        if not loop:
            continue
        done = subprocess.run(["losetup", "-d", loop], capture_output=True, text=True)
        if done.returncode != 0 and "No such device" not in done.stderr:
            problems.append(f"array {name}'s loop device {loop}: {done.stderr.strip()}")
        array["loop"] = None
    path.write_text(json.dumps(state, indent=1))
    return problems
