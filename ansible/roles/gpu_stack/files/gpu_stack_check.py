#!/usr/bin/env python3
"""factory's check of an image's NVIDIA GPU stack, run on the builder (no GPU needed).

What it proves, each from the files and commands the ECS GPU-optimized AMI's recipe
(aws/amazon-ecs-ami scripts/al2023/gpu/install-nvidia-driver.sh,
enable-ecs-agent-gpu-support-al2023.sh; scripts/enable-ecs-agent-gpu-support.sh on AL2)
leaves, checked the way awslabs/amazon-eks-ami's provisioners/validate.sh checks its
NVIDIA AMI (every NVIDIA package and kernel module of one driver version):

- packages: the driver package is installed; every `nvidia*` package but the container
  toolkit and repository packages has the driver's version;
- kernel modules: NVIDIA modules exist for the AMI's kernel, installed under
  /lib/modules/<kernel>/ (their .modinfo section read: version=, vermagic=) or archived by
  DKMS in /var/lib/dkms-archive/<variant>/<module>-<version>-kernel<kernel>-<arch>.dkms.tar.gz
  (chosen at boot by nvidia-kmod-load); each of the driver's version, none for another kernel;
- version locks: `kernel` and every driver package locked (dnf/yum versionlock list);
- ECS: ECS_ENABLE_GPU_SUPPORT=true in /var/lib/ecs/ecs.config or /etc/ecs/ecs.config,
  and not set otherwise in either;
- Docker: a runtime named nvidia registered (docker info);
- systemd: the GPU units enabled (their links in /etc/systemd/system/*.wants/).

Prints a JSON report (driver, CUDA, kernel, toolkit versions, what was found, problems).
Runs with the family's system Python (3.7 on AL2): standard library only.
"""

import argparse
import fnmatch
import glob
import gzip
import json
import lzma
import os
import re
import struct
import subprocess
import sys

# Packages named nvidia* that do not carry the driver's version (EKS validate.sh excludes
# the same kind: the container toolkit and the repository packages).
NOT_DRIVER_VERSIONED = ("nvidia-container-*", "nvidia-docker*", "nvidia-release", "nvidia-repo-s3", "nvidia-ctk*")
ARCHIVE = re.compile(r"^(?P<module>.+?)-(?P<version>\d+(?:\.\d+)+)-kernel(?P<kernel>.+)-(?P<arch>x86_64|aarch64)\.dkms\.tar\.gz$")
# The newest CUDA each driver branch supports (NVIDIA CUDA Toolkit release notes, table
# "CUDA Toolkit and Corresponding Driver Versions"): what a container's CUDA may be at most.
CUDA_FOR_DRIVER = [(580, "13.0"), (575, "12.9"), (570, "12.8"), (565, "12.7"), (560, "12.6"), (555, "12.5"),
                   (550, "12.4"), (545, "12.3"), (535, "12.2"), (530, "12.1"), (525, "12.0"), (520, "11.8"),
                   (515, "11.7"), (510, "11.6"), (495, "11.5"), (470, "11.4")]


def run(argv):
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    except OSError as exc:
        return 127, "", str(exc)
    return done.returncode, done.stdout, done.stderr


def installed_packages():
    rc, out, err = run(["rpm", "-qa", "--queryformat", "%{NAME}|%{VERSION}|%{RELEASE}\n"])
    if rc != 0:
        return None, "rpm -qa failed: " + (err.strip() or out.strip())
    found = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            found[parts[0]] = parts[1]
    return found, None


def locked_names(lock_command):
    """Names of the locked packages: dnf prints `name-epoch:version-release.*`, yum
    `epoch:name-version-release.*`; other lines (plugin chatter) are skipped."""
    rc, out, err = run(lock_command)
    if rc != 0:
        return None, "`{}` failed: {}".format(" ".join(lock_command), (err.strip() or out.strip())[:300])
    names = set()
    for line in out.splitlines():
        line = line.strip()
        m = re.match(r"^(?:\d+:)?(?P<name>[A-Za-z0-9_.+-]+?)-(?:\d+:)?[^-\s]+-[^-\s]+$", line)
        if m and not line.startswith(("Loaded plugins", "Last metadata", "versionlock")):
            names.add(m.group("name"))
    return names, None


def modinfo(path):
    """The .modinfo fields (version, vermagic, name) of a kernel module file (.ko, .ko.xz, .ko.gz)."""
    opener = lzma.open if path.endswith(".xz") else gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        raise ValueError("not a 64-bit ELF object")
    endian = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(endian + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(endian + "HHH", data, 0x3A)

    def section(i):
        name, _type, _flags, _addr, offset, size = struct.unpack_from(endian + "IIQQQQ", data, shoff + i * shentsize)
        return name, offset, size

    _n, str_off, _s = section(shstrndx)
    for i in range(shnum):
        name, offset, size = section(i)
        end = data.index(b"\0", str_off + name)
        if data[str_off + name:end] == b".modinfo":
            fields = {}
            for item in data[offset:offset + size].split(b"\0"):
                key, sep, value = item.decode("utf-8", "replace").partition("=")
                if sep:
                    fields.setdefault(key, value)
            return fields
    raise ValueError("no .modinfo section")


def modules(root, kernel, arch):
    """Every NVIDIA kernel module the image carries: installed or archived by DKMS."""
    found = []
    for path in sorted(glob.glob(os.path.join(root, "lib/modules/*/**/nvidia*.ko*"), recursive=True)):
        rel = os.path.relpath(path, root)
        module_kernel = rel.split(os.sep)[2]
        try:
            info = modinfo(path)
        except (OSError, ValueError, EOFError, lzma.LZMAError, struct.error) as exc:
            found.append({"path": "/" + rel, "kernel": module_kernel, "version": None, "problem": str(exc)})
            continue
        vermagic = (info.get("vermagic") or "").split()
        found.append({"path": "/" + rel, "kernel": module_kernel, "version": info.get("version"),
                      "vermagic_kernel": vermagic[0] if vermagic else None})
    for path in sorted(glob.glob(os.path.join(root, "var/lib/dkms-archive/*/*.tar.gz"))):
        m = ARCHIVE.match(os.path.basename(path))
        rel = "/" + os.path.relpath(path, root)
        if not m:
            found.append({"path": rel, "kernel": None, "version": None, "problem": "not named <module>-<version>-kernel<kernel>-<arch>.dkms.tar.gz"})
        else:
            found.append({"path": rel, "kernel": m.group("kernel"), "version": m.group("version"), "arch": m.group("arch")})
    return found


def ecs_gpu_setting(root):
    values = {}
    for path in ("var/lib/ecs/ecs.config", "etc/ecs/ecs.config"):
        try:
            with open(os.path.join(root, path)) as f:
                for line in f:
                    key, sep, value = line.strip().partition("=")
                    if sep and key.strip() == "ECS_ENABLE_GPU_SUPPORT":
                        values["/" + path] = value.strip().strip('"')
        except OSError:
            pass
    return values


def docker_runtimes():
    rc, out, err = run(["docker", "info", "--format", "{{json .Runtimes}}"])
    if rc != 0:
        return None, "docker info failed: " + (err.strip() or out.strip())[:300]
    try:
        return json.loads(out), None
    except ValueError:
        return None, "docker info printed no runtimes: " + out[:200]


def unit_enabled(root, unit):
    return bool(glob.glob(os.path.join(root, "etc/systemd/system/*.wants", unit)))


def cuda_for(driver):
    try:
        major = int(driver.split(".")[0])
    except (AttributeError, ValueError):
        return None
    for branch, cuda in CUDA_FOR_DRIVER:
        if major >= branch:
            return cuda
    return None


def check(args):
    problems = []
    root = args.root
    report = {"kernel": args.kernel, "family": args.family}
    packages, err = installed_packages()
    if err:
        problems.append(err)
        packages = {}
    driver_package = next((p for p in args.driver_packages if p in packages), None)
    driver = packages.get(driver_package) if driver_package else None
    report["driver_package"] = driver_package
    report["driver_version"] = driver
    report["cuda_version"] = cuda_for(driver) if driver else None
    toolkits = sorted(v for n, v in packages.items() if re.match(r"^cuda-toolkit(-\d+-\d+)?$", n))
    report["cuda_toolkit"] = toolkits[-1] if toolkits else None
    report["container_toolkit_version"] = packages.get("nvidia-container-toolkit")
    if not driver_package:
        problems.append("no NVIDIA driver package is installed (looked for {}): the base is not the ECS GPU-optimized AMI".format(
            ", ".join(args.driver_packages)))
    if "nvidia-container-toolkit" not in packages:
        problems.append("nvidia-container-toolkit is not installed: Docker cannot give containers the GPUs")
    driver_set = sorted(n for n in packages if fnmatch.fnmatch(n, "nvidia*")
                        and not any(fnmatch.fnmatch(n, p) for p in NOT_DRIVER_VERSIONED))
    report["driver_packages"] = {n: packages[n] for n in driver_set}
    if driver:
        for name in driver_set:
            if packages[name] != driver:
                problems.append("package {} is {}, not the driver's {}: the NVIDIA packages were updated apart".format(name, packages[name], driver))

    found = modules(root, args.kernel, args.arch)
    report["kernel_modules"] = found
    if not found:
        problems.append("no NVIDIA kernel module for kernel {} (none in /lib/modules/{}/ nor in /var/lib/dkms-archive/)".format(args.kernel, args.kernel))
    for mod in found:
        if mod.get("problem"):
            problems.append("kernel module {} cannot be read: {}".format(mod["path"], mod["problem"]))
            continue
        if mod["kernel"] != args.kernel or mod.get("vermagic_kernel") not in (None, args.kernel):
            problems.append("kernel module {} is built for kernel {}, but the AMI's kernel is {}: the kernel changed under the driver "
                            "(aws/amazon-ecs-ami#256)".format(mod["path"], mod.get("vermagic_kernel") or mod["kernel"], args.kernel))
        if driver and mod["version"] != driver:
            problems.append("kernel module {} is version {}, the driver packages {}".format(mod["path"], mod["version"], driver))

    locked, err = locked_names(args.lock_command)
    if err:
        problems.append(err)
        locked = set()
    report["locked"] = sorted(locked)
    must_lock = ["kernel"] + driver_set
    report["must_lock"] = must_lock
    for name in must_lock:
        if name in packages and name not in locked:
            problems.append("{} is not version-locked any more (`{}` does not list it): a role cleared or deleted the lock; "
                            "no role may update or unlock kernel* or nvidia* (aws/amazon-ecs-ami#256)".format(name, " ".join(args.lock_command)))
    if "kernel" not in packages:
        problems.append("the kernel package is not in the rpm database")

    ecs = ecs_gpu_setting(root)
    report["ecs_enable_gpu_support"] = ecs
    if "true" not in ecs.values() or any(v != "true" for v in ecs.values()):
        problems.append("ECS_ENABLE_GPU_SUPPORT=true is not what the ECS agent reads ({}): without it the agent gives no task a GPU".format(
            ecs or "not set in /var/lib/ecs/ecs.config nor /etc/ecs/ecs.config"))

    runtimes, err = docker_runtimes()
    if err:
        problems.append(err)
        runtimes = {}
    report["docker_runtimes"] = sorted(runtimes)
    if "nvidia" not in runtimes:
        problems.append("Docker has no runtime named nvidia (it has {}): containers would not see the GPUs".format(", ".join(sorted(runtimes)) or "none"))
    else:
        report["nvidia_runtime"] = runtimes["nvidia"].get("path") if isinstance(runtimes["nvidia"], dict) else None

    report["units"] = {u: unit_enabled(root, u) for u in args.units}
    for unit, enabled in report["units"].items():
        if not enabled:
            problems.append("unit {} is not enabled (no link in /etc/systemd/system/*.wants/)".format(unit))
    report["problems"] = problems
    report["ok"] = not problems
    return report


def lock_missing(args):
    """Lock `kernel` and the driver packages where the base did not (the AL2 GPU AMI installs
    yum's versionlock plugin but locks nothing); names locked exactly as installed."""
    packages, err = installed_packages()
    if err:
        return {"added": [], "problems": [err]}
    locked, err = locked_names(args.lock_command)
    if err:
        return {"added": [], "problems": [err]}
    wanted = ["kernel"] + sorted(n for n in packages if fnmatch.fnmatch(n, "nvidia*")
                                 and not any(fnmatch.fnmatch(n, p) for p in NOT_DRIVER_VERSIONED))
    missing = [n for n in wanted if n in packages and n not in locked]
    if missing:
        add = args.lock_command[:-1] + ["add"] + missing
        rc, out, err = run(add)
        if rc != 0:
            return {"added": [], "problems": ["`{}` failed: {}".format(" ".join(add), (err.strip() or out.strip())[:300])]}
    return {"added": missing, "problems": []}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", required=True, help="the AMI's kernel release (uname -r)")
    parser.add_argument("--arch", default="x86_64")
    parser.add_argument("--family", default="al2023")
    parser.add_argument("--lock-command", default="dnf versionlock list")
    parser.add_argument("--driver-packages", default="nvidia-driver,nvidia-driver-latest-dkms")
    parser.add_argument("--units", default="")
    parser.add_argument("--root", default="/", help="the root to look in (tests)")
    parser.add_argument("--report", help="also write the report here")
    parser.add_argument("--lock-missing", action="store_true", help="lock kernel and the driver packages where they are not, then stop")
    args = parser.parse_args(argv)
    args.lock_command = args.lock_command.split()
    args.driver_packages = [p for p in args.driver_packages.split(",") if p]
    args.units = [u for u in args.units.split(",") if u]
    if args.lock_missing:
        done = lock_missing(args)
        print(json.dumps(done, sort_keys=True))
        return 1 if done["problems"] else 0
    report = check(args)
    text = json.dumps(report, indent=2, sort_keys=True)
    if args.report:
        os.makedirs(os.path.dirname(args.report), exist_ok=True)
        with open(args.report, "w") as f:
            f.write(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
