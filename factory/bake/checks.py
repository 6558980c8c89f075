"""The checks a bake makes before any instance starts: the builder's memory
(`check_builder_memory`), AWS's session-manager-plugin when Packer tunnels through it
(`check_session_manager_plugin`), a pinned base AMI this account can launch
(`check_pinned_ami`), and an ansible-playbook old enough for the family's Python
(`ansible_playbook_version`, `check_ansible_can_manage`). Each names the setting to change."""

from __future__ import annotations

from typing import Any

from factory.errors import FactoryError


def check_builder_memory(ec2: Any, instance_type: str, architecture: str, source: str, reads: Any = None) -> None:
    """The builder runs Docker, the ECS agent and a conda-forge solve (documented to be
    OOM-killed on 1 GiB): refuse a type with less than 4 GiB before any instance starts.
    One instance type asked by name: a single page."""
    from botocore.exceptions import ClientError

    from factory.aws import aws_errors, error_code
    from factory.families import BUILDER_INSTANCE_TYPE, BUILDER_MIN_MEMORY_MIB

    field_name = f"builder.instance_types.{architecture}"
    if reads is not None:
        known = reads.instance_type(instance_type)
        types = [known] if known else []
    else:
        with aws_errors(f"looking up the builder instance type {instance_type}"):
            try:
                types = ec2.describe_instance_types(InstanceTypes=[instance_type]).get("InstanceTypes", [])  # one type, so one answer: no paging (MaxResults) needed
            except ClientError as exc:
                if error_code(exc) != "InvalidInstanceType":
                    raise
                types = []
    if not types:
        raise FactoryError(f"{source}: {field_name}: {instance_type} is not an instance type this region offers; "
                           f"pick another (default {BUILDER_INSTANCE_TYPE[architecture]})")
    mib = int(types[0].get("MemoryInfo", {}).get("SizeInMiB", 0))
    if mib < BUILDER_MIN_MEMORY_MIB:
        raise FactoryError(
            f"{source}: {field_name}: {instance_type} has {mib / 1024:g} GiB of memory; the builder runs Docker, "
            f"the ECS agent and a conda-forge solve, which needs at least {BUILDER_MIN_MEMORY_MIB // 1024} GiB "
            f"(conda is OOM-killed on 1 GiB): pick {BUILDER_INSTANCE_TYPE[architecture]} or larger"
        )


SESSION_MANAGER_PLUGIN = "session-manager-plugin"
SESSION_MANAGER_PLUGIN_DOCS = (
    "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html"
)


def check_session_manager_plugin(target: Any, source: str, env: dict[str, str] | None = None) -> None:
    """With `ssh_interface: session_manager`, Packer opens its SSH tunnel through AWS's
    session-manager-plugin on this machine: refuse before any instance starts when the
    PATH Packer runs with has none (Packer would only fail after launching the builder)."""
    import shutil

    from factory import packer

    if getattr(target, "ssh_interface", "") != "session_manager":
        return
    if shutil.which(SESSION_MANAGER_PLUGIN, path=packer.run_environment(env).get("PATH", "")):
        return
    raise FactoryError(
        f"{source}: builder.ssh_interface: session_manager needs AWS's {SESSION_MANAGER_PLUGIN} where factory "
        f"runs, and none is on PATH: install it ({SESSION_MANAGER_PLUGIN_DOCS}) or use ssh_interface public_ip "
        "or private_ip"
    )


def check_pinned_ami(spec: Any, ec2: Any, ami: str) -> None:
    """A pinned `image.base` must name an AMI this account can launch in the spec's region:
    say so, naming the spec's field, before Packer makes a key pair and security group."""
    from botocore.exceptions import ClientError

    from factory.aws import aws_errors, error_code

    missing = False
    with aws_errors(f"looking up the pinned base AMI {ami}"):
        try:
            images = ec2.describe_images(ImageIds=[ami]).get("Images", [])  # one id, so one answer: no paging (MaxResults) needed
        except ClientError as exc:
            if error_code(exc) not in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"):
                raise
            images, missing = [], True
    state = images[0].get("State") if images else None
    if missing or not images or state not in (None, "available"):
        why = f"is {state}" if state else "does not exist or is not shared with this account"
        raise FactoryError(
            f"{spec.path}: image.base: {ami} {why} in {spec.region}. Pin an available AMI of that "
            "region (AMI ids differ per region), or use ecs-al2023, ecs-al2 or ecs-al1"
        )


def ansible_playbook_version(env: dict[str, str] | None = None) -> tuple[str, tuple[int, int]]:
    """The `ansible-playbook` Packer's ansible provisioner will run (found on the PATH Packer
    gets, as packer.py builds it) and its ansible-core version: (path, (major, minor))."""
    import re
    import shutil
    import subprocess

    from factory import packer
    from factory.errors import PackerError

    path_var = packer.run_environment(env).get("PATH", "")
    binary = shutil.which("ansible-playbook", path=path_var)
    if not binary:
        raise PackerError("ansible-playbook is not on the PATH Packer runs with: run `make venv` (or "
                          "`pip install ansible-core`) so Packer's ansible provisioner finds it")
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackerError(f"cannot run `{binary} --version` ({exc})") from None
    m = re.search(r"\[core (\d+)\.(\d+)", out.stdout) or re.search(r"ansible-playbook (\d+)\.(\d+)", out.stdout)
    if not m:
        raise PackerError(f"`{binary} --version` did not say its ansible-core version: {out.stdout.strip()[:120]!r}")
    return binary, (int(m.group(1)), int(m.group(2)))


def check_ansible_can_manage(family: str, env: dict[str, str] | None = None) -> None:
    """Refuse early (before any EC2 instance starts) when the ansible-playbook Packer runs
    is too new for the family's system Python (families.FAMILIES[...].ansible_core_below)."""
    from factory.families import FAMILIES

    info = FAMILIES[family]
    if info.ansible_core_below is None:
        return
    binary, version = ansible_playbook_version(env)
    if version >= info.ansible_core_below:
        below = ".".join(map(str, info.ansible_core_below))
        raise FactoryError(
            f"{binary} is ansible-core {version[0]}.{version[1]}, which cannot manage ecs-{family}: its "
            f"{info.python_label} ({info.python_interpreter}) is supported only by ansible-core older than {below}. "
            f"Bake it with `pip install 'ansible-core<{below}'` in a virtualenv whose bin/ comes first on PATH, "
            "or move the spec to `image.base: ecs-al2023`"
        )
