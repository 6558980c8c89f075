"""An image's identity: the content hash a bake tags on its AMI, and what goes into it.

`image_hash()` is a sha256 over everything that shapes the image:

- the resolved base AMI id (not the SSM parameter name: a new base is a new image),
- every file of the Packer template folder and of the Ansible content (playbook, roles),
- the rendered variables that go into the image (sizes, prefix, installer checksum, ...),
  without what varies per run or only labels the AMI (endpoint, SSH host/port, key pair,
  key file, installer URL, task name, spec hash, timestamps).

bake tags it (`factory:image-hash`) and reuses an AMI by it; register (an AMI that still
serves a task) and status (image content changed since the bake) compare an AMI's tag
with `expected_image_hash`. A module of its own so that none of them imports another.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

IMAGE_HASH_TAG = "factory:image-hash"
HASH_VERSION = "factory-image-hash/1"

# Rendered variables that vary per run or per cloud, or only label the AMI. Everything
# else the render step writes into the variables file shapes the image and is hashed.
NOT_IMAGE_VARIABLES = frozenset({
    # where and how Packer reaches the builder (the local cloud's ports, keys, endpoint)
    "custom_endpoint_ec2", "skip_region_validation", "skip_credential_validation", "skip_metadata_api_check",
    "ssh_host", "ssh_port", "ssh_username", "ssh_interface", "ssh_timeout", "ssh_keypair_name",
    "ssh_private_key_file", "builder_cidrs", "subnet_id", "iam_instance_profile", "instance_type",
    "associate_public_ip",
    "ansible_python_interpreter", "ansible_become",
    # the installer's location (its sha256, which pins the content, is hashed)
    "miniconda_installer_url",
    # labels: the AMI's name and tags, the region it is made in (the base AMI id already
    # differs per region)
    "task", "region", "tags",
})


def image_variables(variables: dict[str, Any]) -> dict[str, Any]:
    """The rendered variables that shape the image (see NOT_IMAGE_VARIABLES)."""
    return {k: v for k, v in sorted(variables.items()) if k not in NOT_IMAGE_VARIABLES}


def image_hash(base_ami: str, files: Iterable[tuple[str, Path]], variables: dict[str, Any]) -> str:
    """sha256 over the base AMI id, the template and role files, and the image variables."""
    h = hashlib.sha256()

    def put(label: str, data: bytes) -> None:
        h.update(label.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)

    put("version", HASH_VERSION.encode())
    put("base_ami", base_ami.encode())
    for name, path in files:
        put("file:" + name, Path(path).read_bytes())
    put("variables", json.dumps(image_variables(variables), sort_keys=True, default=str).encode())
    return h.hexdigest()


def content_hash(base_ami: str, variables: dict[str, Any], modern_packer: bool, memo: dict[str, str] | None = None) -> str:
    """The image hash of a task rendered with `variables` (what a bake tags on its AMI).
    `memo` (one dict for one run over many specs) answers a second spec with the same base
    and image variables without reading the template and role files again: tasks of one
    family in launch-template mode have the same image."""
    from factory import render as render_mod

    variables = dict(variables)
    # Packer 1.7+ keeps the template's IMDSv2 blocks, which set the AMI's imds_support.
    variables["__modern_packer"] = modern_packer
    if memo is None:
        return image_hash(base_ami, render_mod.content_files(), variables)
    key = json.dumps([base_ami, image_variables(variables)], sort_keys=True, default=str)
    if key not in memo:
        memo[key] = image_hash(base_ami, render_mod.content_files(), variables)
    return memo[key]


def expected_image_hash(spec: Any, base_ami: str, target: Any = None, plan: Any = None, memo: dict[str, str] | None = None) -> str:
    """The image hash a bake of `spec` on `base_ami` would tag now, without rendering or
    running anything but `packer version` (once per process). `target` is the cloud's
    BuildTarget (the local cloud's installer differs from AWS's; default AWS's)."""
    from dataclasses import replace

    from factory import render as render_mod
    from factory.sizing import size_task

    target = target or render_mod.BuildTarget.aws()
    if not target.builder_cidrs:
        # The builder's allowed addresses are not part of the image (NOT_IMAGE_VARIABLES):
        # a placeholder spares the lookup of this machine's public address.
        target = replace(target, builder_cidrs=("127.0.0.1/32",))
    variables = render_mod.variables_for(spec, plan or size_task(spec), base_ami, target)
    version = render_mod.packer_version_or_none()
    return content_hash(base_ami, variables, version is None or tuple(version) >= render_mod.MODERN_PACKER, memo)
