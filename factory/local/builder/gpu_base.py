"""The local build host as the family's ECS GPU-optimized AMI (`image.accelerator: nvidia`).

This machine has no GPU and no NVIDIA driver, and the build host's root is Debian's, so
what the GPU check (ansible/roles/gpu_stack) reads is stood in for, each part as the ECS
GPU AMI's recipe leaves it (aws/amazon-ecs-ami scripts/al2023/gpu/install-nvidia-driver.sh,
enable-ecs-agent-gpu-support-al2023.sh, kmod-util; scripts/enable-ecs-agent-gpu-support.sh
on AL2), with the driver versions of its NVIDIA_DRIVER_VERSION file:

- the rpm database: `rpm -q`/`rpm -qa` answered from a list of the GPU AMI's packages
  (kernel, the nvidia* driver packages at the driver's version, the container toolkit);
- version locks: the family's `dnf`/`yum` stand-in (family_root) hands `versionlock`
  (list, add, delete, clear) to a stand-in keeping the plugin's own file
  (/etc/dnf/plugins/versionlock.list on AL2023, /etc/yum/pluginconf.d/versionlock.list
  on AL2) in the plugin's line format; AL2023's base comes locked as the recipe locks it
  ('kernel*' 'nvidia*' 'kmod*' 'libnvidia*' 'xorg*'), AL2's unlocked as its recipe leaves it;
- kernel modules for the build host's kernel (`uname -r`, the kernel Ansible reports): on
  AL2023 the three DKMS archives nvidia-kmod-load picks from at boot
  (/var/lib/dkms-archive/<variant>/<module>-<driver>-kernel<kernel>-x86_64.dkms.tar.gz),
  on AL2 also the installed modules /lib/modules/<kernel>/extra/nvidia*.ko.xz; each module
  a small ELF object whose .modinfo section says `version=<driver>` and
  `vermagic=<kernel> ...` as a built module's does (no code: nothing here loads it);
- ECS: ECS_ENABLE_GPU_SUPPORT=true in /var/lib/ecs/ecs.config;
- Docker: /etc/docker-runtimes.d/nvidia (exec /usr/bin/nvidia-container-runtime), given to
  the build host's dockerd as `--add-runtime nvidia=...` as Amazon Linux's docker package
  does for every file there; /usr/bin/nvidia-container-runtime passes through to runc
  (no GPU to hand a container);
- systemd: the GPU units and their links in /etc/systemd/system/multi-user.target.wants/.

Everything is written inside the throwaway root (its overlay upper directory), so the
bake's AMI tree carries it and the next builder starts without it.

    look_like_gpu_base(host, "al2023")
"""

from __future__ import annotations

import io
import json
import lzma
import struct
import tarfile
from typing import Any

from factory.errors import LocalCloudError

# aws/amazon-ecs-ami NVIDIA_DRIVER_VERSION (snapshot a2532d35): the driver each GPU AMI carries.
DRIVER = {"al2023": "580.159.03", "al2": "550.163.01"}
CONTAINER_TOOLKIT = "1.17.8"  # a stand-in value: the recipe installs the repository's newest
RPM_DB = "/var/lib/factory-buildhost/rpm.json"  # inside the root: the stand-in rpm database
LOCK_FILE = {"al2023": "/etc/dnf/plugins/versionlock.list", "al2": "/etc/yum/pluginconf.d/versionlock.list"}
VERSIONLOCK = "/usr/local/sbin/factory-versionlock"  # the dnf/yum stand-in hands `versionlock` to it
RPM = "/usr/local/sbin/rpm"
RUNTIME = "/etc/docker-runtimes.d/nvidia"
AL2023_LOCKS = ("kernel*", "nvidia*", "kmod*", "libnvidia*", "xorg*")  # install-nvidia-driver.sh


def packages(family: str, kernel: str) -> dict[str, dict[str, str]]:
    """The GPU AMI's packages the check reads: name -> version, release."""
    driver = DRIVER[family]
    kernel_version, _, kernel_release = kernel.partition("-")
    dist = "amzn2023" if family == "al2023" else "amzn2"
    # An RPM release has no `-` (uname -r = <version>-<release>.<arch> on Amazon Linux).
    out = {"kernel": {"version": kernel_version, "release": kernel_release.replace("-", "_") or "1"}}
    if family == "al2023":
        names = ["nvidia-driver", "nvidia-driver-cuda", "nvidia-driver-libs", "nvidia-fabricmanager", "nvidia-persistenced",
                 "nvidia-settings", "nvidia-libXNVCtrl", "nvidia-kmod-common", "libnvidia-fbc"]
        out["nvidia-release"] = {"version": "2023", "release": "1." + dist}
        out["dkms"] = {"version": "3.2.2", "release": "1." + dist}
    else:
        names = ["nvidia-driver-latest-dkms", "nvidia-driver-latest-dkms-cuda", "nvidia-driver-latest-dkms-libs",
                 "nvidia-fabric-manager", "nvidia-persistenced", "nvidia-kmod-common"]
        out["docker-runtime-nvidia"] = {"version": "1", "release": "1." + dist}
        out["yum-plugin-versionlock"] = {"version": "1.1.31", "release": "46." + dist}
    for name in names:
        out[name] = {"version": driver, "release": "1." + dist}
    for name in ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container1", "libnvidia-container-tools"):
        out[name] = {"version": CONTAINER_TOOLKIT, "release": "1"}
    return out


def units(family: str) -> list[str]:
    return (["nvidia-kmod-load.service"] if family == "al2023" else []) + ["nvidia-persistenced.service", "nvidia-fabricmanager.service"]


def module_object(name: str, version: str, kernel: str) -> bytes:
    """A 64-bit ELF relocatable object with only a .modinfo section, as a built kernel
    module carries it (`modinfo` reads the same fields): name, version, vermagic, license."""
    modinfo = b"".join(f"{k}={v}".encode() + b"\0" for k, v in (
        ("license", "Dual MIT/GPL"), ("version", version), ("name", name.replace("-", "_")),
        ("vermagic", f"{kernel} SMP mod_unload modversions "), ("description", "factory local stand-in: no code")))
    shstrtab = b"\0.modinfo\0.shstrtab\0"
    data_off = 64
    str_off = data_off + len(modinfo)
    sh_off = (str_off + len(shstrtab) + 7) // 8 * 8
    header = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header += struct.pack("<HHIQQQIHHHHHH", 1, 62, 1, 0, 0, sh_off, 0, 64, 0, 0, 64, 3, 2)
    body = header + modinfo + shstrtab
    body += bytes(sh_off - len(body))
    null = bytes(64)
    sec_modinfo = struct.pack("<IIQQQQIIQQ", 1, 1, 2, 0, data_off, len(modinfo), 0, 0, 1, 0)
    sec_str = struct.pack("<IIQQQQIIQQ", 10, 3, 0, 0, str_off, len(shstrtab), 0, 0, 1, 0)
    return body + null + sec_modinfo + sec_str


def dkms_archive(module: str, version: str, kernel: str, arch: str = "x86_64") -> bytes:
    """`dkms mktarball`'s tarball of one module built for `kernel` (its module tree only)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name in ("nvidia", "nvidia-uvm", "nvidia-modeset"):
            data = lzma.compress(module_object(name, version, kernel))
            info = tarfile.TarInfo(f"./dkms_main_tree/{kernel}/{arch}/module/{name}.ko.xz")
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def files(family: str, kernel: str) -> dict[str, tuple[bytes, int]]:
    """Every file the stand-in writes inside the root: path -> (content, mode)."""
    driver = DRIVER[family]
    out: dict[str, tuple[bytes, int]] = {
        RPM_DB: (json.dumps({"packages": packages(family, kernel)}, indent=2).encode() + b"\n", 0o644),
        RPM: (_RPM.encode(), 0o755),
        VERSIONLOCK: (_VERSIONLOCK.replace("@LOCK_FILE@", LOCK_FILE[family]).replace("@MANAGER@", "dnf" if family == "al2023" else "yum").encode(), 0o755),
        "/var/lib/ecs/ecs.config": (b"ECS_ENABLE_GPU_SUPPORT=true\n", 0o644),
        RUNTIME: (b'#!/bin/sh\nexec /usr/bin/nvidia-container-runtime "$@"\n', 0o755),
        "/usr/bin/nvidia-container-runtime": (
            b"#!/bin/sh\n# factory's local stand-in for NVIDIA's runtime: no GPU here, so it hands every call to runc.\n"
            b'exec runc "$@"\n', 0o755),
    }
    variants = ("nvidia-open", "nvidia-proprietary", "nvidia-grid") if family == "al2023" else ("nvidia-open",)
    for variant in variants:
        out[f"/var/lib/dkms-archive/{variant}/{variant}-{driver}-kernel{kernel}-x86_64.dkms.tar.gz"] = (dkms_archive(variant, driver, kernel), 0o644)
    if family == "al2":
        for name in ("nvidia", "nvidia-uvm", "nvidia-modeset"):
            out[f"/lib/modules/{kernel}/extra/{name}.ko.xz"] = (lzma.compress(module_object(name, driver, kernel)), 0o644)
    for unit in units(family):
        folder = "/etc/systemd/system" if unit == "nvidia-kmod-load.service" else "/usr/lib/systemd/system"
        out[f"{folder}/{unit}"] = (f"[Unit]\nDescription={unit} (factory local stand-in)\n\n[Service]\nType=oneshot\nExecStart=/bin/true\n\n"
                                    "[Install]\nWantedBy=multi-user.target\n".encode(), 0o644)
    return out


def look_like_gpu_base(host: Any, family: str) -> dict[str, Any]:
    """Make the running build host (already `family_root.look_like(family)`) look like the
    family's ECS GPU-optimized AMI (see the module docstring). Returns what it stood in."""
    if family not in DRIVER:
        raise LocalCloudError(f"the local cloud has no GPU base for {family}: AWS publishes ECS GPU-optimized AMIs for al2023 and al2 only")
    kernel = host.run("uname", "-r").stdout.strip()
    plan = {path: [content.hex(), mode] for path, (content, mode) in files(family, kernel).items()}
    plan_units = units(family)
    locks = list(AL2023_LOCKS) if family == "al2023" else []
    host.run("python3", "-c", _WRITE, json.dumps(plan_units), input=json.dumps(plan))
    if locks:
        host.run(VERSIONLOCK, "add", *locks)
    # As Amazon Linux's docker package does for each file in /etc/docker-runtimes.d.
    host.run("sh", "-c", "grep -q -- '--add-runtime nvidia=' /etc/default/docker || "
                         f"sed -i 's|^DOCKER_OPTS=\"|DOCKER_OPTS=\"--add-runtime nvidia={RUNTIME} |' /etc/default/docker")
    if host.docker:
        host.run("/etc/init.d/docker", "restart", timeout=90)
        host.run("sh", "-c", "for i in $(seq 1 120); do docker info >/dev/null 2>&1 && exit 0; sleep 0.5; done; exit 1", timeout=90)
    return {"family": family, "kernel": kernel, "driver": DRIVER[family], "locks": locks, "units": plan_units}


# Writes the plan (path -> [hex content, mode]) read on stdin, and enables the units named in argv[1].
_WRITE = r'''
import json, os, sys
plan = json.load(sys.stdin)
for path, (content, mode) in plan.items():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(bytes.fromhex(content))
    os.chmod(path, mode)
wants = "/etc/systemd/system/multi-user.target.wants"
os.makedirs(wants, exist_ok=True)
for unit in json.loads(sys.argv[1]):
    src = next(p for p in ("/etc/systemd/system/" + unit, "/usr/lib/systemd/system/" + unit) if os.path.exists(p))
    link = os.path.join(wants, unit)
    if not os.path.lexists(link):
        os.symlink(src, link)
'''

# `rpm -q` / `rpm -qa` on the local build host: answers from the stand-in database.
_RPM = r'''#!/usr/bin/python3
"""Stand-in for rpm on factory's local build host (factory/local/builder/gpu_base.py):
answers `rpm -q[a] [--queryformat FMT] [NAME|PATTERN...]` from the GPU base's package list."""
import fnmatch, json, re, sys

db = json.load(open("/var/lib/factory-buildhost/rpm.json"))["packages"]
args = sys.argv[1:]
fmt, names, query, every = "%{NAME}-%{VERSION}-%{RELEASE}\n", [], False, False
i = 0
while i < len(args):
    a = args[i]
    if a in ("--queryformat", "--qf"):
        fmt = args[i + 1]
        i += 2
        continue
    if a.startswith("--queryformat="):
        fmt = a.split("=", 1)[1]
    elif a in ("-q", "--query"):
        query = True
    elif a in ("-qa", "-aq"):
        query = every = True
    elif a in ("-a", "--all"):
        every = True
    elif a.startswith("-"):
        print("rpm: the local build host's stand-in answers only rpm -q and rpm -qa, not " + a, file=sys.stderr)
        sys.exit(1)
    else:
        names.append(a)
    i += 1
if not query:
    print("rpm: the local build host's stand-in answers only rpm -q and rpm -qa", file=sys.stderr)
    sys.exit(1)
fmt = fmt.encode().decode("unicode_escape")


def show(name):
    p = db[name]
    fields = {"NAME": name, "VERSION": p["version"], "RELEASE": p["release"], "EPOCH": "(none)", "ARCH": "x86_64"}
    sys.stdout.write(re.sub(r"%\{(\w+)\}", lambda m: fields.get(m.group(1).upper(), "(none)"), fmt))


status = 0
if every:
    for name in sorted(db):
        if not names or any(fnmatch.fnmatchcase(name, n) for n in names):
            show(name)
else:
    for n in names:
        if n in db:
            show(n)
        else:
            print("package %s is not installed" % n)
            status = 1
sys.exit(status)
'''

# `dnf versionlock ...` / `yum versionlock ...` on the local build host, on the plugin's own file.
_VERSIONLOCK = r'''#!/usr/bin/python3
"""Stand-in for the @MANAGER@ versionlock plugin on factory's local build host
(factory/local/builder/gpu_base.py): list, add, delete and clear on @LOCK_FILE@,
in the plugin's line format (dnf: name-epoch:version-release.*, yum: epoch:name-version-release.*)."""
import fnmatch, json, os, re, sys

LOCKS = "@LOCK_FILE@"
dnf = "@MANAGER@" == "dnf"
db = json.load(open("/var/lib/factory-buildhost/rpm.json"))["packages"]
args = [a for a in sys.argv[1:] if not a.startswith("-")]
if args and args[0] == "versionlock":
    args = args[1:]
command, patterns = (args[0], args[1:]) if args else ("list", [])


def read():
    try:
        with open(LOCKS) as f:
            return [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    except FileNotFoundError:
        return []


def write(lines):
    os.makedirs(os.path.dirname(LOCKS), exist_ok=True)
    with open(LOCKS, "w") as f:
        f.write("".join(line + "\n" for line in lines))


def entry(name):
    p = db[name]
    return ("%s-0:%s-%s.*" % (name, p["version"], p["release"])) if dnf else ("0:%s-%s-%s.*" % (name, p["version"], p["release"]))


def name_of(line):
    m = re.match(r"^(?:\d+:)?(.+?)-(?:\d+:)?[^-]+-[^-]+$", line)
    return m.group(1) if m else line


lines = read()
if command == "list":
    print("\n".join(lines)) if lines else None
elif command in ("add", "lock"):
    names = [n for n in sorted(db) if any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not names:
        print("Error: No package found for: " + " ".join(patterns) if dnf else "versionlock add: no matches for " + " ".join(patterns))
        sys.exit(1)
    for n in names:
        if entry(n) not in lines:
            lines.append(entry(n))
            print(("Adding versionlock on: " if dnf else "Adding versionlock on: ") + entry(n))
    write(lines)
elif command in ("delete", "del"):
    kept = [line for line in lines if not any(fnmatch.fnmatchcase(name_of(line), p) or fnmatch.fnmatchcase(line, p) for p in patterns)]
    for line in lines:
        if line not in kept:
            print("Deleting versionlock for: " + line)
    write(kept)
elif command == "clear":
    write([])
else:
    print("Error: the local build host's versionlock stand-in runs list, add, delete and clear, not " + command, file=sys.stderr)
    sys.exit(1)
'''
