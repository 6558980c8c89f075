"""The double's commands: `python -m factory.local.instance.lvm_double.lvm COMMAND ARGS...`.

Each command takes the arguments lvm2's takes for what the grow pool does (others are
refused, exit 3, naming the double), prints lvm2's messages and reports, and exits 5
(lvm2's ECMD_FAILED) on what lvm2 refuses. See the package's docstring for the rules.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

MIB = 1024**2
EXTENT_BYTES = 4 * MIB  # vgcreate's default --physicalextentsize
PE_START_BYTES = 1 * MIB  # the label and metadata area, aligned to lvm.conf's default data_alignment (1 MiB)
ECMD_FAILED = 5
EINVALID_CMD_LINE = 3
LOOP_CTL_GET_FREE = 0x4C82
LOOP_MAJOR = 7


class Refused(Exception):
    """What lvm2 refuses: its message lines, and its exit status."""

    def __init__(self, *lines: str, status: int = ECMD_FAILED):
        super().__init__("\n".join(lines))
        self.lines = lines
        self.status = status


def say(line: str) -> None:
    print(f"  {line}", flush=True)


def state_dir() -> Path:
    return Path(os.environ["FACTORY_LVM_DOUBLE_STATE"])


@contextlib.contextmanager
def locked_state() -> Iterator[dict]:
    d = state_dir()
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "state.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = d / "state.json"
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError:
            state = {}
        for key in ("pvs", "vgs", "lvs"):
            state.setdefault(key, {})
        yield state
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=1))
        os.replace(tmp, path)


# -- sizes ------------------------------------------------------------------------------

def device_bytes(device: str) -> int:
    with open(device, "rb") as f:
        return f.seek(0, os.SEEK_END)


def pe_count(size_bytes: int) -> int:
    """Extents a PV of `size_bytes` holds: what follows pe_start, in whole 4 MiB extents."""
    return max(0, (size_bytes - PE_START_BYTES) // EXTENT_BYTES)


def vg_extents(state: dict, vg: str) -> int:
    return sum(state["pvs"][pv]["pe_count"] for pv in state["vgs"][vg]["pvs"])


def vg_used(state: dict, vg: str) -> int:
    return sum(lv["extents"] for lv in state["lvs"].values() if lv["vg"] == vg)


def vg_free(state: dict, vg: str) -> int:
    return vg_extents(state, vg) - vg_used(state, vg)


def human(size: int) -> str:
    """lvm2's default unit (`--units r`): two decimals, '<' when rounded down."""
    for unit, scale in (("t", 1024**4), ("g", 1024**3), ("m", MIB), ("k", 1024)):
        if size >= scale:
            value = size / scale
            shown = f"{value:.2f}"
            return ("<" if float(shown) < value else "") + shown + unit
    return f"{size}b"


# -- arguments ---------------------------------------------------------------------------

def parse(argv: list[str], flags: set[str], valued: set[str]) -> tuple[dict[str, str | bool], list[str]]:
    """Options lvm2-style (`-l 100%FREE`, `-ay`, `--units b`); anything else is refused."""
    opts: dict[str, str | bool] = {}
    args: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in flags:
            opts[a] = True
        elif a in valued:
            if i + 1 >= len(argv):
                raise Refused(f"Option {a} requires an argument.", status=EINVALID_CMD_LINE)
            opts[a] = argv[i + 1]
            i += 1
        elif a[:2] in valued and len(a) > 2 and not a.startswith("--"):
            opts[a[:2]] = a[2:]
        elif a.startswith("-"):
            raise Refused(f"{a}: not an option factory's LVM double implements (factory/local/instance/lvm_double)", status=EINVALID_CMD_LINE)
        else:
            args.append(a)
        i += 1
    return opts, args


def real_path(device: str) -> str:
    path = os.path.realpath(device)
    try:
        if not stat.S_ISBLK(os.stat(path).st_mode):
            raise Refused(f"Cannot use {device}: device not found")
    except FileNotFoundError:
        raise Refused(f"Cannot use {device}: device not found") from None
    return path


def real_lvm(command: str) -> str:
    """lvm2's own binary (not the double's script), for writing a PV's on-disk label."""
    mine = os.path.realpath(os.environ.get("FACTORY_LVM_DOUBLE_BIN", "/nonexistent"))
    for d in os.environ.get("PATH", "").split(":") + ["/usr/sbin", "/sbin"]:
        candidate = os.path.join(d, command)
        if d and os.path.realpath(d) != mine and os.access(candidate, os.X_OK):
            return candidate
    raise Refused(f"factory's LVM double needs lvm2's own {command} to write PV labels: install lvm2", status=ECMD_FAILED)


# -- commands ----------------------------------------------------------------------------

def make_pv(state: dict, device: str, force: int = 0) -> str:
    dev = real_path(device)
    pv = state["pvs"].get(dev)
    if pv and pv.get("vg") and force < 2:
        raise Refused(f'Can\'t initialize physical volume "{device}" of volume group "{pv["vg"]}" without -ff',
                      f"{device}: physical volume not initialized.")
    # The label is lvm2's: its pvcreate writes it (no device-mapper needed), seeing only this device.
    config = f'devices {{ filter = [ "a|^{dev}$|", "r|.*|" ] obtain_device_list_from_udev = 0 }}'
    done = subprocess.run([real_lvm("pvcreate"), "-y", "-ff", "--config", config, dev], capture_output=True, text=True,
                          env=dict(os.environ, LVM_SUPPRESS_FD_WARNINGS="1"))
    if done.returncode != 0:
        raise Refused(*[ln.strip() for ln in (done.stderr or done.stdout).strip().splitlines() if ln.strip()], status=done.returncode)
    state["pvs"][dev] = {"pe_start": PE_START_BYTES, "pe_count": pe_count(device_bytes(dev)), "vg": None}
    say(f'Physical volume "{device}" successfully created.')
    return dev


def pvcreate(argv: list[str]) -> None:
    opts, devices = parse(argv, {"-y", "--yes", "-f", "-ff"}, set())
    if not devices:
        raise Refused("Please enter a physical volume path.", status=EINVALID_CMD_LINE)
    with locked_state() as state:
        for d in devices:
            make_pv(state, d, force=2 if "-ff" in opts else 0)


def join_vg(state: dict, vg: str, devices: list[str]) -> None:
    for device in devices:
        dev = real_path(device)
        pv = state["pvs"].get(dev)
        if pv and pv.get("vg"):
            raise Refused(f"Physical volume '{device}' is already in volume group '{pv['vg']}'",
                          f"Unable to add physical volume '{device}' to volume group '{pv['vg']}'",
                          f"{device}: physical volume not initialized.")
        if pv is None:  # lvm2 initialises a device that is not a PV yet
            make_pv(state, device)
        state["pvs"][dev]["vg"] = vg
        state["vgs"][vg]["pvs"].append(dev)


def vgcreate(argv: list[str]) -> None:
    opts, args = parse(argv, {"-y", "--yes"}, set())
    if len(args) < 2:
        raise Refused("Please provide volume group name and physical volumes", status=EINVALID_CMD_LINE)
    vg, devices = args[0], args[1:]
    with locked_state() as state:
        if vg in state["vgs"]:
            raise Refused(f"A volume group called {vg} already exists.")
        state["vgs"][vg] = {"extent_size": EXTENT_BYTES, "pvs": []}
        try:
            join_vg(state, vg, devices)
        except Refused:
            del state["vgs"][vg]
            raise
    say(f'Volume group "{vg}" successfully created')


def need_vg(state: dict, vg: str) -> None:
    if vg not in state["vgs"]:
        raise Refused(f'Volume group "{vg}" not found', f"Cannot process volume group {vg}")


def vgextend(argv: list[str]) -> None:
    opts, args = parse(argv, {"-y", "--yes"}, set())
    if len(args) < 2:
        raise Refused("Please enter volume group name and physical volume(s)", status=EINVALID_CMD_LINE)
    vg, devices = args[0], args[1:]
    with locked_state() as state:
        need_vg(state, vg)
        join_vg(state, vg, devices)
    say(f'Volume group "{vg}" successfully extended')


def extents_wanted(spec: str, free: int, current: int = 0) -> int:
    """`-l` as lvm2 reads it: N, +N, or P%FREE / +P%FREE / P%VG."""
    plus = spec.startswith("+")
    body = spec.lstrip("+")
    if body.upper().endswith("%FREE"):
        n = free * int(body[:-5]) // 100
    elif body.upper().endswith("%VG"):
        raise Refused(f"-l {spec}: not a form factory's LVM double implements", status=EINVALID_CMD_LINE)
    elif body.isdigit():
        n = int(body)
    else:
        raise Refused(f'Invalid argument for --extents: {spec}', status=EINVALID_CMD_LINE)
    return current + n if plus else n


def lv_key(name: str) -> str:
    """/dev/VG/LV, /dev/mapper/VG-LV or VG/LV -> VG/LV."""
    if name.startswith("/dev/mapper/"):
        vg, _, lv = name[len("/dev/mapper/"):].partition("-")
        return f"{vg}/{lv}"
    return name[len("/dev/"):] if name.startswith("/dev/") else name


def lvcreate(argv: list[str]) -> None:
    opts, args = parse(argv, {"-y", "--yes"}, {"-l", "--extents", "-n", "--name", "-a", "--activate", "-Z", "--zero"})
    extents, name = opts.get("-l") or opts.get("--extents"), opts.get("-n") or opts.get("--name")
    if not (extents and name and len(args) == 1):
        raise Refused("factory's LVM double takes lvcreate -l EXTENTS -n NAME VG", status=EINVALID_CMD_LINE)
    vg = args[0]
    with locked_state() as state:
        need_vg(state, vg)
        key = f"{vg}/{name}"
        if key in state["lvs"]:
            raise Refused(f'Logical Volume "{name}" already exists in volume group "{vg}"')
        free = vg_free(state, vg)
        n = extents_wanted(str(extents), free)
        if n < 1 or n > free:
            raise Refused(f'Volume group "{vg}" has insufficient free space ({free} extents): {max(n, 1)} required.')
        state["lvs"][key] = {"vg": vg, "name": name, "extents": n, "loop": None, "file": str(state_dir() / f"{vg}-{name}.img")}
        if (opts.get("-a") or opts.get("--activate") or "y") != "n":
            activate(state["lvs"][key])
    say(f'Logical volume "{name}" created.')


def lvextend(argv: list[str]) -> None:
    opts, args = parse(argv, {"-y", "--yes"}, {"-l", "--extents"})
    extents = opts.get("-l") or opts.get("--extents")
    if not (extents and len(args) == 1):
        raise Refused("factory's LVM double takes lvextend -l [+]EXTENTS VG/LV", status=EINVALID_CMD_LINE)
    key = lv_key(args[0])
    with locked_state() as state:
        lv = state["lvs"].get(key)
        if lv is None:
            raise Refused(f'Failed to find logical volume "{key}"')
        free, old = vg_free(state, lv["vg"]), lv["extents"]
        new = extents_wanted(str(extents), free, old)
        if new == old:
            raise Refused(f"New size ({new} extents) matches existing size ({old} extents).")
        if new < old:
            raise Refused(f"New size given ({new} extents) not larger than existing size ({old} extents)")
        if new - old > free:
            raise Refused(f"Insufficient free space: {new - old} extents needed, but only {free} available")
        lv["extents"] = new
        if lv["loop"]:
            with open(lv["file"], "r+b") as f:
                f.truncate(new * EXTENT_BYTES)
            done = subprocess.run(["losetup", "-c", lv["loop"]], capture_output=True, text=True)
            if done.returncode != 0:
                raise Refused(f"{lv['loop']}: reload failed: {done.stderr.strip()}")
    say(f"Size of logical volume {key} changed from {human(old * EXTENT_BYTES)} ({old} extents) to "
        f"{human(new * EXTENT_BYTES)} ({new} extents).")
    say(f"Logical volume {key} successfully resized.")


def free_loop() -> str:
    """A free loop device, its node made when this /dev (a local instance's) lacks it."""
    import fcntl as _f

    fd = os.open("/dev/loop-control", os.O_RDWR)
    try:
        n = _f.ioctl(fd, LOOP_CTL_GET_FREE)
    finally:
        os.close(fd)
    path = f"/dev/loop{n}"
    if not os.path.exists(path):
        os.mknod(path, 0o660 | stat.S_IFBLK, os.makedev(LOOP_MAJOR, n))
    return path


def activate(lv: dict) -> None:
    if lv["loop"]:
        return
    size = lv["extents"] * EXTENT_BYTES
    with open(lv["file"], "a+b") as f:
        f.truncate(size)  # sparse: only what is written takes space
    for _ in range(20):  # another process may take the free device first
        loop = free_loop()
        done = subprocess.run(["losetup", loop, lv["file"]], capture_output=True, text=True)
        if done.returncode == 0:
            break
    else:
        raise Refused(f"cannot activate {lv['vg']}/{lv['name']}: no loop device ({done.stderr.strip()})")
    lv["loop"] = loop
    for link in (f"/dev/{lv['vg']}/{lv['name']}", f"/dev/mapper/{lv['vg']}-{lv['name']}"):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)
        os.symlink(loop, link)


def deactivate(lv: dict) -> None:
    if not lv["loop"]:
        return
    done = subprocess.run(["losetup", "-d", lv["loop"]], capture_output=True, text=True)
    if done.returncode != 0:
        raise Refused(f"Logical volume {lv['vg']}/{lv['name']} in use.")
    lv["loop"] = None
    for link in (f"/dev/{lv['vg']}/{lv['name']}", f"/dev/mapper/{lv['vg']}-{lv['name']}"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link)


def vgchange(argv: list[str]) -> None:
    opts, args = parse(argv, {"-y", "--yes"}, {"-a", "--activate"})
    how = opts.get("-a") or opts.get("--activate")
    if how not in ("y", "n") or len(args) != 1:
        raise Refused("factory's LVM double takes vgchange -ay|-an VG", status=EINVALID_CMD_LINE)
    vg = args[0]
    with locked_state() as state:
        need_vg(state, vg)
        lvs = [lv for lv in state["lvs"].values() if lv["vg"] == vg]
        for lv in lvs:
            activate(lv) if how == "y" else deactivate(lv)
    say(f'{len(lvs) if how == "y" else 0} logical volume(s) in volume group "{vg}" now active')


def vgremove(argv: list[str]) -> None:
    opts, args = parse(argv, {"-y", "--yes", "-f", "-ff"}, set())
    with locked_state() as state:
        for vg in args:
            need_vg(state, vg)
            for key in [k for k, lv in state["lvs"].items() if lv["vg"] == vg]:
                deactivate(state["lvs"][key])
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(state["lvs"][key]["file"])
                del state["lvs"][key]
                say(f'Logical volume "{key.split("/")[1]}" successfully removed.')
            for pv in state["vgs"].pop(vg)["pvs"]:
                state["pvs"][pv]["vg"] = None
            say(f'Volume group "{vg}" successfully removed')


# -- reports -----------------------------------------------------------------------------

def report(argv: list[str], rows_of, default: str) -> None:
    opts, args = parse(argv, {"--noheadings"}, {"-o", "--options", "--units", "-S", "--select"})
    fields = str(opts.get("-o") or opts.get("--options") or default).split(",")
    units = opts.get("--units")
    if units not in (None, "b", "B"):
        raise Refused(f"--units {units}: factory's LVM double prints bytes (b) or lvm2's default", status=EINVALID_CMD_LINE)
    select = opts.get("-S") or opts.get("--select")
    with locked_state() as state:
        rows = rows_of(state, args)
    if select:
        key, _, want = str(select).partition("=")
        rows = [r for r in rows if str(r.get(key)) == want]
    cells = [[fmt(r[f], units) if f in r else "" for f in fields] for r in rows]
    if not opts.get("--noheadings"):
        cells.insert(0, [f for f in fields])
    widths = [max((len(row[i]) for row in cells), default=0) for i in range(len(fields))]
    for row in cells:
        print("  " + " ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())


def fmt(value, units) -> str:
    if isinstance(value, tuple):  # (bytes,)
        return f"{value[0]}B" if units else human(value[0])
    return str(value)


def pv_rows(state: dict, args: list[str]) -> list[dict]:
    rows = []
    for dev, pv in sorted(state["pvs"].items()):
        vg = pv.get("vg") or ""
        used = 0
        if vg:  # the LVs' extents are taken from the VG's PVs in order
            left = vg_used(state, vg)
            for other in state["vgs"][vg]["pvs"]:
                take = min(left, state["pvs"][other]["pe_count"])
                if other == dev:
                    used = take
                left -= take
        rows.append({"pv_name": dev, "vg_name": vg, "pe_start": (pv["pe_start"],), "pv_pe_count": pv["pe_count"],
                     "pv_size": (pv["pe_count"] * EXTENT_BYTES,), "pv_free": ((pv["pe_count"] - used) * EXTENT_BYTES,)})
    return [r for r in rows if not args or r["pv_name"] in {os.path.realpath(a) for a in args}]


def vg_rows(state: dict, args: list[str]) -> list[dict]:
    for vg in args:
        need_vg(state, vg)
    rows = []
    for vg in sorted(args or state["vgs"]):
        total, free = vg_extents(state, vg), vg_free(state, vg)
        rows.append({"vg_name": vg, "pv_count": len(state["vgs"][vg]["pvs"]),
                     "lv_count": sum(1 for lv in state["lvs"].values() if lv["vg"] == vg),
                     "vg_size": (total * EXTENT_BYTES,), "vg_free": (free * EXTENT_BYTES,), "vg_extent_size": (EXTENT_BYTES,),
                     "vg_extent_count": total, "vg_free_count": free})
    return rows


def lv_rows(state: dict, args: list[str]) -> list[dict]:
    rows = []
    for key, lv in sorted(state["lvs"].items()):
        if args and not any(lv_key(a) in (key, lv["vg"]) for a in args):
            continue
        rows.append({"lv_name": lv["name"], "vg_name": lv["vg"], "lv_size": (lv["extents"] * EXTENT_BYTES,),
                     "lv_path": f"/dev/{key}", "lv_active": "active" if lv["loop"] else ""})
    return rows


COMMANDS = {
    "pvcreate": pvcreate, "vgcreate": vgcreate, "vgextend": vgextend, "lvcreate": lvcreate, "lvextend": lvextend,
    "vgchange": vgchange, "vgremove": vgremove,
    "pvs": lambda argv: report(argv, pv_rows, "pv_name,vg_name,pv_size,pv_free"),
    "vgs": lambda argv: report(argv, vg_rows, "vg_name,pv_count,lv_count,vg_size,vg_free"),
    "lvs": lambda argv: report(argv, lv_rows, "lv_name,vg_name,lv_size"),
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"factory's LVM double: unknown command {argv[:1]}", file=sys.stderr)
        return EINVALID_CMD_LINE
    try:
        COMMANDS[argv[0]](argv[1:])
    except Refused as exc:
        for line in exc.lines:
            print(f"  {line}", file=sys.stderr)
        return exc.status
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
