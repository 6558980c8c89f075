"""The image manifest: what a baked image holds, and its headline values as AMI tags.

The `image_manifest` role records it on the builder, after the bake check, in
`/etc/factory/image-manifest.json` (it stays on the image) and fetches it to
`build/<task>/image-manifest.json`: the OS, kernel, Docker (version, storage driver, data
root and its size), containerd, the ECS agent (from its package; null without one), the
AWS CLI's path and version, Miniconda's (conda's) version, the bake check's report, every
installed package (rpm or dpkg), and the bake's labels (task, base AMI, image hash).

A few headline values become AMI tags (`HEADLINE_TAGS`). They are known only once the
play has run, after Packer set the AMI's other tags at its creation, so the bake adds them
with CreateTags; a bake that reuses the AMI adds any still missing (a run that died
between the build and the tagging is finished by the next).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

ON_IMAGE = "/etc/factory/image-manifest.json"
FILE_NAME = "image-manifest.json"  # beside the build: build/<task>/image-manifest.json
SCHEMA = "factory/image-manifest/1"
TAG_VALUE_MAX = 256  # EC2 API reference, Tag.Value: at most 256 Unicode characters

# tag key -> where its value is in the manifest (a missing or null value: no tag)
HEADLINE_TAGS: dict[str, tuple[tuple[str, ...], ...]] = {
    "factory:os": (("os", "name"), ("os", "version")),
    "factory:kernel": (("kernel",),),
    "factory:docker": (("docker", "version"), ("docker", "storage_driver")),
    "factory:ecs-agent": (("ecs_agent", "version"),),
    "factory:awscli": (("awscli", "version"),),
    # A GPU image's stack (gpu_stack role's check): the NVIDIA driver, the newest CUDA it
    # supports (a container's CUDA may be at most this), the container toolkit.
    "factory:nvidia-driver": (("gpu", "driver_version"),),
    "factory:cuda": (("gpu", "cuda_version"),),
    "factory:nvidia-container-toolkit": (("gpu", "container_toolkit_version"),),
}


def read(path: Path) -> dict[str, Any]:
    """The manifest at `path`; a file that is not one is an error naming it."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FactoryError(f"{path}: no image manifest there; `factory bake` fetches it from the builder") from None
    except (OSError, ValueError) as exc:
        raise FactoryError(f"{path}: not an image manifest ({exc}); bake again (`factory bake TASK --force`) to fetch a new one") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        raise FactoryError(f"{path}: not an image manifest (its schema is not {SCHEMA}); bake again to fetch a new one")
    return data


def _value(manifest: dict[str, Any], path: tuple[str, ...]) -> Any:
    value: Any = manifest
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def headline_tags(manifest: dict[str, Any]) -> dict[str, str]:
    """The AMI tags the manifest's headline values make, each within AWS's 256 characters.
    A value the image does not have (no ECS agent package) makes no tag."""
    tags: dict[str, str] = {}
    for key, paths in HEADLINE_TAGS.items():
        values = [_value(manifest, p) for p in paths]
        if values[0] in (None, ""):
            continue
        tags[key] = " ".join(str(v) for v in values if v not in (None, ""))[:TAG_VALUE_MAX]
    return tags


def find(build_root: Path, task: str, image_hash: str | None = None) -> tuple[Path, dict[str, Any]] | None:
    """The fetched manifest of `task`'s image: build_root/<task>/image-manifest.json, or,
    when that is missing or describes another image, the one of the bake that made the
    image (a task sharing another task's AMI), found by `image_hash`. None when none."""
    build_root = Path(build_root)
    own = build_root / task / FILE_NAME
    candidates = [own] + sorted(p for p in build_root.glob(f"*/{FILE_NAME}") if p != own)
    for path in candidates:
        if not path.is_file():
            continue
        try:
            manifest = read(path)
        except FactoryError:
            continue
        if image_hash is None and path == own:
            return path, manifest
        if image_hash is not None and manifest.get("image_hash") == image_hash:
            return path, manifest
    return None


def write(path: Path, manifest: dict[str, Any]) -> Path:
    """Write a manifest atomically (beside, then renamed into place)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.chmod(tmp, 0o644)
    tmp.replace(path)
    return path


def tag_ami(ec2: Any, ami_id: str, tags: dict[str, str], have: dict[str, str] | None = None) -> bool:
    """Add the headline `tags` to the AMI (only those it lacks, when its tags `have` are
    known). The AMI itself is sound (it carries its content hash), so a failure is reported,
    never a reason to remove it: the next bake reuses it and adds them. Returns whether a
    call was made."""
    from factory.aws import aws_errors
    from factory.errors import AwsError

    missing = {k: v for k, v in tags.items() if have is None or have.get(k) != v}
    if not missing:
        return False
    try:
        with aws_errors(f"tagging {ami_id} with its image manifest's headline"):
            ec2.create_tags(Resources=[ami_id], Tags=[{"Key": k, "Value": v} for k, v in sorted(missing.items())])
    except AwsError as exc:
        raise FactoryError(
            f"the AMI {ami_id} is ready but {exc.message}; run the same `factory bake` again to add the tags "
            "(it reuses the AMI)"
        ) from None
    return True
