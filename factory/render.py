"""Render one task's self-contained Packer folder (default `build/<task>/`).

The folder holds the static templates from `packer/` (copied as they are, except that
the blocks fenced `factory:modern-packer` are left out for a Packer older than 1.7, which
cannot parse them), the Ansible content from `ansible/`, and ONE generated, sorted
variables file, `factory.auto.pkrvars.hcl`, which Packer loads by itself. So
`packer validate .` and `packer build .` need no other argument, wherever the folder is.
Rendering the same inputs twice gives byte-identical files; the folder is written
beside its final place and renamed into it, so it is never half-written. A folder that
already holds exactly this render is left as it is: `.factory-render.json` records what
was rendered (a digest of the sources and variables) and each file's size and mtime as
written, so a file changed, added or removed since makes the next render write the folder
again (an unchanged `bake --all` of a hundred specs would otherwise copy 6,500 files).

    target = BuildTarget.aws()                       # or BuildTarget.local(...)
    result = render(spec, plan, base_ami, Path("build/salmon-quant"), target)
    result.files, result.variables, result.manifest
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory import __version__
from factory.errors import AwsError, FactoryError, UsageError
from factory.families import BUILDER_INSTANCE_TYPE
from factory.image_manifest import FILE_NAME as IMAGE_MANIFEST_FILE
from factory.resources import data_dir

VARIABLES_FILE = "factory.auto.pkrvars.hcl"
MANIFEST_FILE = "manifest.json"
BAKE_CHECK_REPORT = "bake-check.json"
PACKER_LOG = "packer.log"
IMAGE_MANIFEST = IMAGE_MANIFEST_FILE  # fetched by the image_manifest role
# What a real build leaves in the folder; a re-render keeps them (see render's `keep`).
BUILD_RECORDS = (PACKER_LOG, MANIFEST_FILE, BAKE_CHECK_REPORT, IMAGE_MANIFEST)
MODERN_PACKER = (1, 7, 0)
RENDER_STAMP = ".factory-render.json"
_FENCE_BEGIN = "# factory:modern-packer begin"
_FENCE_END = "# factory:modern-packer end"
_SKIP = {"__pycache__", ".ansible", ".pytest_cache", ".cache"}


def content_files(packer_dir: Path | None = None, ansible_dir: Path | None = None) -> list[tuple[str, Path]]:
    """What render copies into a build folder, as (stable name, source file), sorted: the
    Packer templates (`packer/*.pkr.hcl`) and the Ansible tree, caches left out. The bake's
    content hash is taken over exactly these, so what is hashed is what is shipped."""
    packer_dir = Path(packer_dir or data_dir("packer"))
    ansible_dir = Path(ansible_dir or data_dir("ansible"))
    out = [(f"packer/{src.name}", src) for src in packer_dir.glob("*.pkr.hcl") if src.is_file()]
    for src in ansible_dir.rglob("*"):
        rel = src.relative_to(ansible_dir)
        if src.is_file() and not _SKIP & set(rel.parts) and src.suffix != ".pyc":
            out.append((f"ansible/{rel.as_posix()}", src))
    return sorted(out)


def miniconda_installer(architecture: str) -> tuple[str, str]:
    """The pinned Miniconda installer (url, sha256) for a spec's architecture.

    The pins live in one place, the miniconda_awscli role's defaults (keyed by `uname -m`),
    so the role works on its own and factory renders the same pins into every build."""
    path = data_dir("ansible") / "roles/miniconda_awscli/defaults/main.yml"
    st = path.stat()
    pins = _installer_pins(str(path), st.st_mtime_ns, st.st_size)
    pin = pins["aarch64" if architecture == "arm64" else architecture]
    return pin["url"], pin["sha256"]


@functools.lru_cache(maxsize=4)
def _installer_pins(path: str, mtime_ns: int, size: int) -> dict[str, Any]:
    """The role's installer pins, parsed once per version of the file (every render asks)."""
    import yaml

    return yaml.safe_load(Path(path).read_text())["miniconda_awscli_installers"]

# The root volume of the ECS-optimized AMIs (a builder volume may not be smaller than
# the base snapshot); AL1 keeps Docker on a separate 22 GiB device.

CALLER_CIDR_ENV = "FACTORY_BUILDER_CIDR"
CHECKIP_URL = "https://checkip.amazonaws.com"


@dataclass(frozen=True)
class BuildTarget:
    """Where a bake builds: real AWS (the defaults) or the local cloud."""

    kind: str = "aws"  # aws | local
    region: str | None = None  # None: the spec's region
    endpoint: str = ""  # custom_endpoint_ec2 (moto's server for the local cloud)
    skip_validations: bool = False  # region / credential / metadata API checks
    ssh_host: str = ""  # "" : the instance's own address
    ssh_port: int = 22
    ssh_username: str | None = None  # None: the family's user (ec2-user)
    ssh_interface: str = "public_ip"  # or private_ip, session_manager
    keypair_name: str = ""  # "" : Packer makes a temporary key pair
    private_key_file: str = ""
    builder_cidrs: tuple[str, ...] = ()  # () : the caller's public address as a /32
    installer_url: str | None = None  # None: the pinned Miniconda installer for the arch
    installer_sha256: str | None = None
    python_interpreter: str = ""  # "": the family's (families.FAMILIES[...].python_interpreter)
    become: bool | None = None  # None: sudo unless the SSH user is root
    iam_instance_profile: str = ""
    subnet_id: str = ""
    kms_key_id: str = ""
    instance_types: dict[str, str] = field(default_factory=dict)  # by architecture; missing: BUILDER_INSTANCE_TYPE
    associate_public_ip: bool | None = None  # None: the subnet's own setting
    bake_check_image: str = ""  # "": an empty image made with `docker import`, the host's C library mounted

    @classmethod
    def aws(cls, **overrides: Any) -> BuildTarget:
        return cls(kind="aws", **overrides)

    @classmethod
    def local(
        cls,
        *,
        endpoint: str,
        ssh_host: str,
        ssh_port: int,
        ssh_username: str,
        keypair_name: str,
        private_key_file: str,
        installer_url: str,
        installer_sha256: str,
        python_interpreter: str,
        **overrides: Any,
    ) -> BuildTarget:
        return cls(
            kind="local",
            endpoint=endpoint,
            skip_validations=True,
            ssh_host=ssh_host,
            ssh_port=ssh_port,
            ssh_username=ssh_username,
            keypair_name=keypair_name,
            private_key_file=private_key_file,
            builder_cidrs=("127.0.0.1/32",),
            installer_url=installer_url,
            installer_sha256=installer_sha256,
            python_interpreter=python_interpreter,
            **overrides,
        )


@dataclass(frozen=True)
class RenderResult:
    task: str
    out_dir: Path
    files: tuple[str, ...]  # every file written, relative to out_dir, sorted
    variables: dict[str, Any]  # what factory.auto.pkrvars.hcl holds
    variables_file: Path
    manifest: Path  # where Packer's manifest post-processor writes
    bake_check_report: Path  # where the bake check's report is fetched to
    packer_version: tuple[int, int, int] | None
    modern_packer: bool  # the factory:modern-packer blocks were kept
    notes: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        lines = [f"rendered {self.task} into {self.out_dir} ({len(self.files)} files):"]
        lines += [f"  {f}" for f in self.files if "/" not in f or f.startswith("ansible/bake")]
        roles = sorted({f.split("/")[2] for f in self.files if f.startswith("ansible/roles/")})
        if roles:
            lines.append(f"  ansible/roles/: {', '.join(roles)}")
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- the base AMI -----------------------------------------------------------------------


def resolve_base_ami(spec: Any, clients: Any) -> str:
    """The exact base AMI: the spec's pinned `ami-...`, else the ECS-optimized SSM parameter
    of the family, architecture and accelerator (families.Family.ssm_parameter)."""
    pinned = spec.image.pinned_ami
    if pinned:
        return pinned
    family = spec.image.family_info
    accelerator = getattr(spec.image, "accelerator", "none")
    name = family.ssm_parameter(spec.image.architecture, accelerator)
    if not name:
        field = "image.architecture" if spec.image.architecture == "arm64" else "image.base"
        raise FactoryError(f"{spec.path}: {field}: {family.no_base_reason(spec.image.architecture, accelerator)}")
    from botocore.exceptions import ClientError

    from factory.aws import aws_errors, error_code

    with aws_errors(f"reading the base AMI from SSM parameter {name}"):
        try:
            value = clients.ssm().get_parameter(Name=name)["Parameter"]["Value"]
        except ClientError as exc:
            if error_code(exc) != "ParameterNotFound":
                raise
            raise AwsError(
                f"{spec.path}: region: {spec.region} has no SSM parameter {name}: AWS publishes no "
                f"{family.label}{' GPU-optimized' if accelerator == 'nvidia' else ''} AMI there. Set `region:` to one "
                f"that has it (aws ssm get-parameter --region <region> --name {name}), or pin image.base to an ami-..."
            ) from None
    return base_ami_from_parameter(name, value)


def base_ami_from_parameter(name: str, value: str) -> str:
    """The AMI id an ECS-optimized SSM parameter's value names."""
    value = value.strip()
    if value.startswith("{"):  # the `recommended` parameter (not `/image_id`) holds JSON
        value = json.loads(value).get("image_id", "")
    if not re.fullmatch(r"ami-[0-9a-f]+", value):
        raise AwsError(f"SSM parameter {name} does not hold an AMI id (it says {value[:60]!r})")
    return value


def caller_cidr() -> str:
    """This machine's public address as a /32, for the builder's security group."""
    env = os.environ.get(CALLER_CIDR_ENV, "").strip()
    if env:
        return _check_cidr(env, CALLER_CIDR_ENV)
    import urllib.request

    try:
        with urllib.request.urlopen(CHECKIP_URL, timeout=5) as r:
            ip = r.read().decode().strip()
    except OSError as exc:
        raise FactoryError(
            f"cannot find this machine's public address ({CHECKIP_URL}: {exc}); set "
            f"{CALLER_CIDR_ENV}=<your address>/32 so only you can reach the builder"
        ) from None
    return _check_cidr(f"{ip}/32", CHECKIP_URL)


def _check_cidr(value: str, where: str) -> str:
    import ipaddress

    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        raise UsageError(f"{where}: {value!r} is not an address range such as 203.0.113.7/32") from None
    # /16 is the widest accepted: 65,536 IPv4 addresses. The same width in IPv6 would be
    # a sixteenth of the internet, so an IPv6 range must be a /48 (one site) or narrower.
    widest = 16 if net.version == 4 else 48
    if net.prefixlen < widest:
        own = "/32" if net.version == 4 else "/128"
        raise UsageError(f"{where}: {value} is too wide (wider than /{widest}); give your own address as a {own}")
    return str(net)


# -- the variables ----------------------------------------------------------------------


def variables_for(spec: Any, plan: Any, base_ami: str, target: BuildTarget) -> dict[str, Any]:
    """Every template variable's value for one task (the generated file's content)."""
    family = spec.image.family_info
    arch = spec.image.architecture
    if family.docker_device and spec.image.volume == "launch-template":
        raise FactoryError(
            f"{spec.path}: image.volume: launch-template cannot size {family.label}: the base AMI's cloud-init runs "
            f"docker-storage-setup at the builder's first boot, which makes Docker's {family.base_docker_gib} GiB thin pool "
            f"on {family.docker_device}, and the AMI keeps that pool, so a larger {family.docker_device} from the launch "
            "template would never be used. Set image.volume: ami (the AMI carries the pool at the task's size), or move "
            "the task to image.base: ecs-al2023"
        )
    volume_gib, basesize_gib = _sizes(plan)
    root_gib = max(family.base_root_gib, int(getattr(plan, "ami_min_gib", 0) or 0)
                   if not family.docker_device else 0)

    # What the builder's sized device holds at bake time: the task's volume when the AMI
    # carries it, else the base's own size (the launch template sizes it at launch).
    if spec.image.volume == "ami":
        sized_gib = max(volume_gib, family.base_sized_gib if family.docker_device else root_gib)
    else:
        sized_gib = family.base_sized_gib if family.docker_device else root_gib
    if family.docker_device:
        devices = [
            {"device_name": family.root_device, "volume_gib": family.base_root_gib},
            {"device_name": family.docker_device, "volume_gib": sized_gib},
        ]
    else:
        devices = [{"device_name": family.root_device, "volume_gib": sized_gib}]
    if family.storage_driver == "overlay2":
        basesize_gib = sized_gib  # no per-container limit: a container sees the volume

    if target.installer_url:
        url, sha = target.installer_url, target.installer_sha256 or ""
    else:
        url, sha = miniconda_installer(arch)
    if not re.fullmatch(r"[0-9a-f]{64}", sha or ""):
        raise UsageError(f"the Miniconda installer for {url} needs its sha256 (64 hex digits), not {sha!r}")

    if target.ssh_interface == "session_manager" and not family.ssm_agent:
        raise FactoryError(
            f"{spec.path}: image.base: {family.label} ships no SSM agent, so builder.ssh_interface: session_manager "
            "(factory.yaml) could never reach its builder. Bake this task with ssh_interface public_ip or private_ip, "
            "or move it to image.base: ecs-al2023"
        )
    user = target.ssh_username or family.ssh_user
    cidrs = list(target.builder_cidrs)
    if not cidrs:
        # Session Manager needs no inbound SSH: the group then admits only loopback.
        if target.ssh_interface == "session_manager":
            cidrs = ["127.0.0.1/32"]
        elif target.ssh_interface == "private_ip" and not os.environ.get(CALLER_CIDR_ENV, "").strip():
            # Over a private address the connection does not come from the public address
            # checkip sees: the user must say where it comes from.
            raise UsageError(
                f"builder.ssh_interface is private_ip: set {CALLER_CIDR_ENV} to the private range factory "
                "connects from (this machine's VPC subnet or VPN, /16 or narrower), so the builder's security "
                "group admits only that; or use ssh_interface: session_manager"
            )
        else:
            cidrs = [caller_cidr()]
    # Normalised as Packer's validation reads them: "a.b.c.d/len" (a bare address is a /32).
    cidrs = [_check_cidr(c, "the builder's allowed addresses") for c in cidrs]

    tags = {
        "factory:task": spec.name,
        "factory:spec-hash": spec.spec_hash,
        "factory:base-ami": base_ami,
        "factory:version": __version__,
    }
    grow = getattr(spec.storage, "grow", None)
    # Only for a growing task, so every other task's variables file stays as it was.
    grow_vars = {"grow_enabled": True, "grow_max_gib": int(grow.max_gib), "grow_volume_type": grow.volume_type} if grow else {}
    if getattr(spec.storage, "on_instance_store", False):  # likewise only for a task on the NVMe store
        grow_vars["instance_store_enabled"] = True
    # Only for a GPU task, likewise.
    accelerator = getattr(spec.image, "accelerator", "none")
    gpu_vars = {"accelerator": accelerator} if accelerator != "none" else {}
    return grow_vars | gpu_vars | {
        "task": spec.name,
        "region": target.region or spec.region,
        "base_ami": base_ami,
        "instance_type": target.instance_types.get(arch) or BUILDER_INSTANCE_TYPE[arch],
        "associate_public_ip": "" if target.associate_public_ip is None else str(bool(target.associate_public_ip)).lower(),
        "ssh_username": user,
        "ssh_interface": target.ssh_interface,
        "builder_cidrs": cidrs,
        "iam_instance_profile": target.iam_instance_profile,
        "subnet_id": target.subnet_id,
        "kms_key_id": target.kms_key_id,
        "block_devices": devices,
        "tags": tags,
        "custom_endpoint_ec2": target.endpoint,
        "skip_region_validation": target.skip_validations,
        "skip_credential_validation": target.skip_validations,
        "skip_metadata_api_check": target.skip_validations,
        "ssh_host": target.ssh_host,
        "ssh_port": int(target.ssh_port),
        "ssh_keypair_name": target.keypair_name,
        "ssh_private_key_file": target.private_key_file,
        "ansible_python_interpreter": target.python_interpreter or family.python_interpreter,
        "ansible_become": target.become if target.become is not None else user != "root",
        "docker_storage_driver": family.storage_driver,
        "family": family.key,
        "volume_gib": int(sized_gib),
        "docker_basesize_gib": int(basesize_gib),
        "awscli_prefix": spec.awscli.prefix,
        "miniconda_installer_url": url,
        "miniconda_installer_sha256": sha,
        "bake_check_image": target.bake_check_image,
        "task_images": list(spec.nextflow.containers),
    }


def _sizes(plan: Any) -> tuple[int, int]:
    """(volume_gib, docker_basesize_gib) from a SizingPlan or a (volume, basesize) pair."""
    if isinstance(plan, (tuple, list)):
        volume, basesize = plan
    else:
        volume = getattr(plan, "tier_volume_gib", None) or plan.volume_gib
        basesize = getattr(plan, "docker_basesize_gib", None)
    volume = int(volume)
    return volume, int(basesize) if basesize else volume


# -- writing ----------------------------------------------------------------------------


def render(
    spec: Any,
    plan: Any,
    base_ami: str,
    out_dir: Path | None = None,
    target: BuildTarget | None = None,
    *,
    packer_version: tuple[int, int, int] | None = None,
    keep: tuple[str, ...] = (),
    sources: list[tuple[str, Path]] | None = None,
) -> RenderResult:
    """Write `out_dir` (default build/<task>) for one task; see the module docstring.

    `plan` is a SizingPlan (or `(volume_gib, docker_basesize_gib)`). `packer_version` is
    detected from the `packer` on PATH when not given; without any Packer the folder is
    written for a modern Packer (1.7+), which is what users run. `keep` names files of the
    folder being replaced that move into the new one (a bake keeps its last build's log).
    `sources` is `content_files()` when the caller has it (a `bake --all` lists them once).
    """

    target = target or BuildTarget.aws()
    out_dir = Path(out_dir) if out_dir is not None else Path("build") / spec.name
    notes: list[str] = []
    if packer_version is None:
        packer_version = _detect_packer_version(notes)
    modern = packer_version is None or tuple(packer_version) >= MODERN_PACKER
    if not modern:
        notes.append(
            f"Packer {'.'.join(map(str, packer_version))} is older than 1.7: the template's "
            "required_plugins and IMDSv2 (metadata_options) blocks are left out"
        )

    variables = variables_for(spec, plan, base_ami, target)
    _guard_out_dir(out_dir)
    sources = sources if sources is not None else content_files()
    pkrvars = to_pkrvars(variables)
    digest = _render_digest(sources, pkrvars, modern)
    written = _current_render(out_dir, digest, keep)
    if written is None:
        written = _write_folder(out_dir, sources, pkrvars, modern, keep, digest)
    out_abs = out_dir.absolute()
    return RenderResult(
        task=spec.name,
        out_dir=out_abs,
        files=tuple(sorted(written)),
        variables=variables,
        variables_file=out_abs / VARIABLES_FILE,
        manifest=out_abs / MANIFEST_FILE,
        bake_check_report=out_abs / BAKE_CHECK_REPORT,
        packer_version=tuple(packer_version) if packer_version else None,
        modern_packer=modern,
        notes=tuple(notes),
    )


_SOURCE_DIGESTS: dict[tuple[str, int, int], str] = {}


def _source_digest(path: Path) -> str:
    """sha256 of a source file, remembered per (path, mtime, size) for the process."""
    import hashlib

    st = path.stat()
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _SOURCE_DIGESTS:
        _SOURCE_DIGESTS[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return _SOURCE_DIGESTS[key]


def _render_digest(sources: list[tuple[str, Path]], pkrvars: str, modern: bool) -> str:
    """What a render writes, as one digest: every source file, the variables, the Packer flavour."""
    import hashlib

    h = hashlib.sha256(f"{__version__}\0{modern}\0".encode())
    for name, src in sources:
        h.update(f"{name}\0{_source_digest(src)}\0".encode())
    h.update(pkrvars.encode())
    return h.hexdigest()


def _folder_files(out_dir: Path) -> dict[str, list[int]]:
    """Every file under `out_dir` (relative path -> [size, mtime_ns]), the stamp left out.
    With os.scandir and plain strings: a `bake --all` checks every build folder each run."""
    out: dict[str, list[int]] = {}
    todo = [(str(out_dir), "")]
    while todo:
        folder, prefix = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            rel = prefix + entry.name
            if entry.is_dir():  # as os.walk: a link to a folder is neither a file nor entered
                if not entry.is_symlink():
                    todo.append((entry.path, rel + "/"))
            elif rel != RENDER_STAMP:
                st = entry.stat()
                out[rel] = [st.st_size, st.st_mtime_ns]
    return out


def _current_render(out_dir: Path, digest: str, keep: tuple[str, ...]) -> list[str] | None:
    """The files of `out_dir` when it holds exactly the render `digest` names, as written
    (the build records `keep` names may be there too); None when it must be written."""
    try:
        stamp = json.loads((out_dir / RENDER_STAMP).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(stamp, dict) or stamp.get("digest") != digest or not isinstance(stamp.get("files"), dict):
        return None
    have = _folder_files(out_dir)
    extra = {k for k in have if k not in stamp["files"]} - set(keep)
    if extra or any(have.get(k) != v for k, v in stamp["files"].items()):
        return None
    return sorted(stamp["files"])


def _write_stamp(folder: Path, digest: str, files: list[str]) -> None:
    have = _folder_files(folder)
    data = {"digest": digest, "files": {k: have[k] for k in files if k in have}}
    tmp = folder / (RENDER_STAMP + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    tmp.replace(folder / RENDER_STAMP)


def _write_folder(out_dir: Path, sources: list[tuple[str, Path]], pkrvars: str, modern: bool, keep: tuple[str, ...], digest: str) -> list[str]:
    """Write the folder beside `out_dir` and rename it into place; returns the files written."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.render-", dir=out_dir.parent))
    try:
        written: list[str] = []
        for name, src in sources:
            rel = name.removeprefix("packer/")  # templates sit at the folder's top
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if src.suffix == ".hcl":
                text = src.read_text()
                dest.write_text(text if modern else strip_modern_blocks(text))
            else:
                shutil.copyfile(src, dest)
            written.append(rel)
        (tmp / VARIABLES_FILE).write_text(pkrvars)
        written.append(VARIABLES_FILE)
        for d in [tmp, *[p for p in tmp.rglob("*") if p.is_dir()]]:
            os.chmod(d, 0o755)
        for f in tmp.rglob("*"):
            if f.is_file():
                os.chmod(f, 0o644)
        for name in keep:
            if (out_dir / name).is_file() and not (tmp / name).exists():
                shutil.copy2(out_dir / name, tmp / name)
        _write_stamp(tmp, digest, written)
        _replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def with_tags(rr: RenderResult, tags: dict[str, str]) -> RenderResult:
    """`rr` with `tags` added to the rendered `tags` variable, and its variables file
    rewritten, so Packer creates the builder, the AMI and its snapshots with them (the
    bake adds the content hash it computed over the folder, which never covers `tags`)."""
    return with_variables(rr, {"tags": {**dict(rr.variables.get("tags") or {}), **tags}})


def with_variables(rr: RenderResult, changes: dict[str, Any]) -> RenderResult:
    """`rr` with `changes` made to its variables, and its variables file rewritten (atomically)."""
    from dataclasses import replace

    variables = {**rr.variables, **changes}
    text = to_pkrvars(variables)
    try:
        unchanged = rr.variables_file.read_text() == text
    except OSError:
        unchanged = False
    if not unchanged:  # a re-render the stamp kept may already hold these variables
        tmp = rr.variables_file.with_name(rr.variables_file.name + ".tmp")
        tmp.write_text(text)
        os.chmod(tmp, 0o644)
        tmp.replace(rr.variables_file)
        _restamp(rr.out_dir, VARIABLES_FILE)
    return replace(rr, variables=variables)


def _restamp(out_dir: Path, rel: str) -> None:
    """Record a file factory itself rewrote after the render (the variables with the
    bake's tags) as the render's, so the next render of the same inputs keeps the folder."""
    try:
        stamp = json.loads((out_dir / RENDER_STAMP).read_text())
    except (OSError, ValueError):
        return
    if isinstance(stamp, dict) and isinstance(stamp.get("files"), dict) and rel in stamp["files"]:
        st = (out_dir / rel).stat()
        stamp["files"][rel] = [st.st_size, st.st_mtime_ns]
        tmp = out_dir / (RENDER_STAMP + ".tmp")
        tmp.write_text(json.dumps(stamp, sort_keys=True) + "\n")
        tmp.replace(out_dir / RENDER_STAMP)


def strip_modern_blocks(text: str) -> str:
    """Leave out the lines fenced `factory:modern-packer` (for Packer < 1.7)."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines(keepends=True):
        mark = line.strip()
        if mark == _FENCE_BEGIN:
            skipping = True
            continue
        if mark == _FENCE_END:
            skipping = False
            continue
        if not skipping:
            out.append(line)
    # a fenced block sat between blank lines: do not leave two in a row
    return re.sub(r"\n(\s*\n){2,}", "\n\n", "".join(out))


def packer_version_or_none() -> tuple[int, int, int] | None:
    """The version of the `packer` render would use (None without one: render then writes for 1.7+)."""
    return _detect_packer_version([])


def _detect_packer_version(notes: list[str]) -> tuple[int, int, int] | None:
    from factory.errors import PackerError
    from factory.packer import find_packer

    try:
        return find_packer().version
    except PackerError:
        notes.append("no Packer found: rendered for Packer 1.7 or newer")
        return None


def _guard_out_dir(out_dir: Path) -> None:
    """Refuse to replace a folder factory did not render (e.g. `--out .`)."""
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / VARIABLES_FILE).exists())):
        raise UsageError(
            f"{out_dir}: exists and is not a folder factory rendered (no {VARIABLES_FILE}); "
            "pick an empty or new folder with --out"
        )


def _replace_dir(new: Path, out_dir: Path) -> None:
    """Put `new` at `out_dir` by renames, so no reader ever sees a half-written folder."""
    if not out_dir.exists():
        new.rename(out_dir)
        return
    old = out_dir.parent / f".{out_dir.name}.old-{os.getpid()}"
    out_dir.rename(old)
    try:
        new.rename(out_dir)
    except BaseException:
        old.rename(out_dir)
        raise
    shutil.rmtree(old, ignore_errors=True)


# -- HCL for the variables file ---------------------------------------------------------


def to_pkrvars(variables: dict[str, Any]) -> str:
    """A sorted `.pkrvars.hcl`, already in `packer fmt`'s canonical layout."""
    header = (
        "# Generated by `factory render`; do not edit (re-render instead).\n"
        "# The values of variables.pkr.hcl for this task and build target.\n\n"
    )
    simple = {k: v for k, v in sorted(variables.items()) if not isinstance(v, (dict, list)) or _inline(v)}
    nested = {k: v for k, v in sorted(variables.items()) if k not in simple}
    blocks = [_aligned([(k, _hcl(v)) for k, v in simple.items()], "")]
    for k, v in nested.items():
        blocks.append(f"{k} = " + _hcl_block(v, ""))
    return header + "\n\n".join(b.rstrip("\n") for b in blocks) + "\n"


def _inline(v: Any) -> bool:
    return isinstance(v, list) and all(not isinstance(x, (dict, list)) for x in v)


def _aligned(pairs: list[tuple[str, str]], indent: str) -> str:
    width = max((len(k) for k, _ in pairs), default=0)
    return "".join(f"{indent}{k.ljust(width)} = {v}\n" for k, v in pairs)


def _key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_-]*", k) else json.dumps(k)


def _hcl(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v).replace("${", "$${").replace("%{", "%%{")
    if isinstance(v, list):
        return "[" + ", ".join(_hcl(x) for x in v) + "]"
    raise TypeError(f"cannot write {type(v).__name__} as HCL")


def _hcl_block(v: Any, indent: str) -> str:
    inner = indent + "  "
    if isinstance(v, dict):
        simple = [(_key(k), _hcl(x)) for k, x in sorted(v.items()) if not isinstance(x, (dict, list)) or _inline(x)]
        nested = [(k, x) for k, x in sorted(v.items()) if isinstance(x, (dict, list)) and not _inline(x)]
        body = _aligned(simple, inner)
        for k, x in nested:
            body += f"{inner}{_key(k)} = " + _hcl_block(x, inner)
        return "{\n" + body + indent + "}\n"
    if isinstance(v, list):
        body = "".join(inner + _hcl_block(x, inner).rstrip("\n") + ",\n" for x in v)
        return "[\n" + body + indent + "]\n"
    return _hcl(v) + "\n"
