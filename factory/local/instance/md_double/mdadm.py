"""The double's command: `python -m factory.local.instance.md_double.mdadm ARGS...`.

Takes the arguments mdadm takes for what the instance-store boot unit does (--create,
--detail --export, --stop); prints mdadm's messages, exits 1 on what mdadm refuses and 2 on
what the double does not implement. See the package's docstring for the rules and sizes.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

SECTOR = 512
KIB = 1024
MIB = 1024**2
GIB = 1024**3
DEFAULT_CHUNK_KIB = 512  # mdadm's default chunk (`--chunk`)
FAILED = 1
USAGE = 2
LOOP_CTL_GET_FREE = 0x4C82
LOOP_MAJOR = 7


class Refused(Exception):
    def __init__(self, message: str, status: int = FAILED):
        super().__init__(message)
        self.status = status


@contextlib.contextmanager
def locked_state() -> Iterator[dict]:
    d = Path(os.environ["FACTORY_MD_DOUBLE_STATE"])
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "state.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = d / "state.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            state = {}
        state.setdefault("arrays", {})
        yield state
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)


# -- md's sizes ------------------------------------------------------------------------------

def bitmap_space_sectors(dev_sectors: int) -> int:
    """super1.c choose_bm_space: what metadata 1.x leaves for a bitmap."""
    if dev_sectors < 64 * 2:
        return 0
    if dev_sectors - 64 * 2 >= 200 * 1024 * 1024 * 2:
        return 128 * 2
    if dev_sectors - 4 * 2 > 8 * 1024 * 1024 * 2:
        return 64 * 2
    return 4 * 2


def data_offset_sectors(dev_sectors: int, chunk_kib: int = DEFAULT_CHUNK_KIB) -> int:
    """super1.c validate_geometry1 (metadata 1.2): where each member's data starts."""
    headroom = 128 * 1024 * 2
    while (headroom << 10) > dev_sectors and headroom // 2 >= chunk_kib * 2 * 2:
        headroom >>= 1
    offset = 12 * 2 + bitmap_space_sectors(dev_sectors) + headroom
    one_meg = 2 * 1024
    return (offset + one_meg - 1) // one_meg * one_meg


def member_data_bytes(dev_bytes: int, chunk_kib: int = DEFAULT_CHUNK_KIB) -> int:
    """What one member gives a raid0 array: its data after data_offset, in whole chunks (raid0.c)."""
    sectors = dev_bytes // SECTOR
    data = sectors - data_offset_sectors(sectors, chunk_kib)
    chunk = chunk_kib * 2
    return max(0, data // chunk * chunk) * SECTOR


def raid0_bytes(dev_bytes: list[int], chunk_kib: int = DEFAULT_CHUNK_KIB) -> int:
    return sum(member_data_bytes(b, chunk_kib) for b in dev_bytes)


# -- devices ----------------------------------------------------------------------------------

def block_device(path: str) -> str:
    real = os.path.realpath(path)
    try:
        if not stat.S_ISBLK(os.stat(real).st_mode):
            raise Refused(f"mdadm: {path} is not a block device.")
    except FileNotFoundError:
        raise Refused(f"mdadm: cannot open {path}: No such file or directory") from None
    return real


def device_bytes(device: str) -> int:
    with open(device, "rb") as f:
        return f.seek(0, os.SEEK_END)


def free_loop() -> str:
    fd = os.open("/dev/loop-control", os.O_RDWR)
    try:
        n = fcntl.ioctl(fd, LOOP_CTL_GET_FREE)
    finally:
        os.close(fd)
    path = f"/dev/loop{n}"
    if not os.path.exists(path):
        os.mknod(path, 0o660 | stat.S_IFBLK, os.makedev(LOOP_MAJOR, n))
    return path


def attach(file: str) -> str:
    for _ in range(20):  # another process may take the free device first
        loop = free_loop()
        done = subprocess.run(["losetup", loop, file], capture_output=True, text=True)
        if done.returncode == 0:
            return loop
    raise Refused(f"mdadm: cannot start the array: no loop device ({done.stderr.strip()}) [factory's md double]")


def links(array: dict) -> list[str]:
    return [f"/dev/md/{array['name']}", f"/dev/{array['md']}"]


def find(state: dict, device: str) -> tuple[str, dict] | None:
    for name, array in state["arrays"].items():
        if array.get("loop") and device in links(array) + [array["loop"]]:
            return name, array
    real = os.path.realpath(device)
    for name, array in state["arrays"].items():
        if array.get("loop") and real in [os.path.realpath(p) for p in links(array)]:
            return name, array
    return None


# -- commands ---------------------------------------------------------------------------------

def parse(argv: list[str]) -> tuple[dict[str, str | bool], list[str]]:
    flags = {"--create", "-C", "--detail", "-D", "--export", "-Y", "--stop", "-S", "--run", "-R", "--force", "-f", "--verbose", "-v"}
    valued = {"--level", "-l", "--metadata", "-e", "--name", "-N", "--raid-devices", "-n", "--chunk", "-c"}
    opts: dict[str, str | bool] = {}
    args: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        key, eq, value = a.partition("=")
        if a in flags:
            opts[a] = True
        elif key in valued and eq:
            opts[key] = value
        elif a in valued:
            if i + 1 >= len(argv):
                raise Refused(f"mdadm: option {a} requires an argument", USAGE)
            opts[a] = argv[i + 1]
            i += 1
        elif a.startswith("-"):
            raise Refused(f"mdadm: {a}: not an option factory's md double implements (factory/local/instance/md_double)", USAGE)
        else:
            args.append(a)
        i += 1
    return opts, args


def opt(opts: dict, *names: str):
    for n in names:
        if n in opts:
            return opts[n]
    return None


def create(opts: dict, args: list[str]) -> None:
    if not args:
        raise Refused("mdadm: an md device must be given in this mode", USAGE)
    target, disks = args[0], args[1:]
    level = str(opt(opts, "--level", "-l") or "")
    if level not in ("0", "raid0", "stripe"):
        raise Refused(f"mdadm: --level={level or '?'}: factory's md double makes raid0 only (factory/local/instance/md_double)", USAGE)
    metadata = str(opt(opts, "--metadata", "-e") or "1.2")
    if metadata not in ("1.2", "default"):
        raise Refused(f"mdadm: --metadata={metadata}: factory's md double writes 1.2 only", USAGE)
    count = opt(opts, "--raid-devices", "-n")
    if count is None:
        raise Refused("mdadm: no raid-devices specified.")
    if not str(count).isdigit() or int(count) < 1:
        raise Refused(f"mdadm: invalid number of raid devices: {count}")
    if len(disks) > int(count):
        raise Refused(f"mdadm: You have listed more devices ({len(disks)}) than are in the array({count})!")
    if len(disks) < int(count):
        raise Refused("mdadm: You haven't given enough devices (real or missing) to create this array")
    chunk = int(str(opt(opts, "--chunk", "-c") or DEFAULT_CHUNK_KIB).rstrip("Kk"))
    if target.startswith("/dev/md/"):
        name = target[len("/dev/md/"):]
    elif target.startswith("/dev/md") and target[7:].isdigit():
        name = target[5:]
    else:
        raise Refused(f"mdadm: {target} is an invalid name for an md device.  Try /dev/md/{os.path.basename(target)}")
    name = str(opt(opts, "--name", "-N") or name)
    with locked_state() as state:
        real = [block_device(d) for d in disks]
        if len(set(real)) != len(real):
            raise Refused("mdadm: the same device is listed twice")
        for other_name, other in state["arrays"].items():
            if not other.get("loop"):
                continue
            if other_name == name or target in links(other):
                raise Refused(f"mdadm: {target} is already active.")
            busy = set(real) & set(other["members"])
            if busy:
                raise Refused(f"mdadm: cannot open {sorted(busy)[0]}: Device or resource busy")
        used = {a["md"] for a in state["arrays"].values() if a.get("loop")}
        md = next(f"md{n}" for n in range(127, -1, -1) if f"md{n}" not in used)
        size = raid0_bytes([device_bytes(d) for d in real], chunk)
        file = str(Path(os.environ["FACTORY_MD_DOUBLE_STATE"]) / f"{name}.img")
        with open(file, "wb") as f:
            f.truncate(size)  # sparse, and blank: a new array's contents are undefined, never the old one's
        array = {"name": name, "md": md, "level": "raid0", "members": real, "chunk_kib": chunk, "bytes": size,
                 "uuid": str(uuid.uuid4()), "file": file, "loop": None}
        array["loop"] = attach(file)
        for link in links(array):
            os.makedirs(os.path.dirname(link), exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(array["loop"], link)
        state["arrays"][name] = array
    print(f"mdadm: array {target} started.", file=sys.stderr)


def detail(opts: dict, args: list[str]) -> None:
    if not (opt(opts, "--export", "-Y")):
        raise Refused("mdadm: --detail without --export: factory's md double prints only the export form", USAGE)
    if len(args) != 1:
        raise Refused("mdadm: --detail --export takes one md device", USAGE)
    with locked_state() as state:
        found = find(state, args[0])
        if found is None:
            raise Refused(f"mdadm: cannot open {args[0]}: No such file or directory")
        _, array = found
    u = array["uuid"].replace("-", "")
    print("MD_LEVEL=raid0")
    print(f"MD_DEVICES={len(array['members'])}")
    print("MD_METADATA=1.2")
    print(f"MD_UUID={u[0:8]}:{u[8:16]}:{u[16:24]}:{u[24:32]}")
    print(f"MD_DEVNAME={array['name']}")
    print(f"MD_NAME={array['name']}")
    for role, member in enumerate(array["members"]):
        key = member.lstrip("/").replace("/", "_")
        print(f"MD_DEVICE_{key}_ROLE={role}")
        print(f"MD_DEVICE_{key}_DEV={member}")


def stop(opts: dict, args: list[str]) -> None:
    if len(args) != 1:
        raise Refused("mdadm: --stop takes one md device", USAGE)
    with locked_state() as state:
        found = find(state, args[0])
        if found is None:
            raise Refused(f"mdadm: error opening {args[0]}: No such file or directory")
        name, array = found
        done = subprocess.run(["losetup", "-d", array["loop"]], capture_output=True, text=True)
        if done.returncode != 0:
            raise Refused(f"mdadm: Cannot get exclusive access to {args[0]}:Perhaps a running process, mounted filesystem or active volume group?")
        for link in links(array):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(array["file"])
        del state["arrays"][name]
    print(f"mdadm: stopped {args[0]}", file=sys.stderr)


def main(argv: list[str]) -> int:
    try:
        opts, args = parse(argv)
        if opt(opts, "--create", "-C"):
            create(opts, args)
        elif opt(opts, "--detail", "-D"):
            detail(opts, args)
        elif opt(opts, "--stop", "-S"):
            stop(opts, args)
        else:
            raise Refused("mdadm: factory's md double runs --create, --detail --export and --stop only "
                          "(factory/local/instance/md_double)", USAGE)
    except Refused as exc:
        print(str(exc), file=sys.stderr)
        return exc.status
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
