"""Where factory's AWS work happens: your AWS account, or the local cloud.

One `Cloud` object gives every step (bake, register, plan, prune) its boto3 clients,
Packer's environment, the build target and the register settings, so no step decides
on its own which account it talks to.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import UsageError

CLOUDS = ("aws", "local")
PACKER_EXECUTION_ENV = "factory-packer"


@dataclass
class Build:
    """One Packer build, as `Cloud.builder` lends it: the render to build and, on the local
    cloud, the build host standing in for its builder."""

    rendered: Any  # render.RenderResult
    host: Any = None  # factory.local.builder.buildhost.BuildHost; None on AWS
    state_dir: Path | None = None  # the local cloud's

    def keep_image(self, ami_id: str) -> None:
        """Just after Packer made `ami_id`. On AWS, nothing: the AMI's snapshots are its disk.
        On the local cloud, the build host's tree is kept as that AMI's disk, for
        `factory local run` to boot (factory.local.builder.ami_trees)."""
        if self.host is not None:
            from factory.local.builder.ami_trees import AmiTrees

            AmiTrees(self.state_dir).keep(ami_id, self.host.upper_dir)


@dataclass
class Cloud:
    """Where a bake runs: real AWS (credentials from the environment) or the local cloud."""

    kind: str  # aws | local
    local: Any = None  # factory.local.cloud.LocalCloud
    config_path: Path | None = None  # factory.yaml; None: ./factory.yaml when it exists
    _clients: dict = field(default_factory=dict, repr=False)

    def clients(self, region: str):
        """One Clients per region, reused by every step of every bake."""
        if region not in self._clients:
            if self.kind == "local":
                self._clients[region] = self.local.clients(region)
            else:
                from factory.aws import Clients

                self._clients[region] = Clients(region=region)
        return self._clients[region]

    def target(self, region: str):
        """Where and on what Packer builds. On AWS: factory.yaml's `builder:` section (its
        instance types, subnet, SSH interface, public address, instance profile, KMS key).
        On the local cloud: its build host, reached on loopback over SSH whatever
        `ssh_interface` says; the rest reaches Packer as on AWS (moto launches whatever type
        it is given, in the subnet, with the instance profile; the copy names the KMS key)."""
        from dataclasses import replace

        from factory import render
        from factory.config import load_config

        builder = load_config(self.config_path).builder
        if self.kind == "local":
            return replace(self.local.build_target(region), **_local_builder_settings(builder))
        return render.BuildTarget.aws(
            instance_types=dict(builder.instance_types),
            subnet_id=builder.subnet or "",
            ssh_interface=builder.ssh_interface,
            # The default VPC gives a public address by itself, and a subnet keeps its own
            # setting unless factory.yaml says otherwise (public_ip, or ssh_interface public_ip).
            associate_public_ip=builder.public_ip if builder.subnet else None,
            iam_instance_profile=builder.instance_profile or "",
            kms_key_id=builder.kms_key or "",
        )

    def config_source(self) -> str:
        """The settings file the builder and register settings come from, for messages."""
        from factory.config import load_config

        return load_config(self.config_path).source

    @contextlib.contextmanager
    def builder(self, region: str, rendered: Any) -> Iterator[Build]:
        """Around one Packer build: yields the `Build` to run, whose `rendered` (a
        render.RenderResult) Packer builds. On AWS, `rendered` as it is: each build gets a
        new instance of the base AMI. On the local cloud, a build host stands in for the
        builder, one per build running at once (`LocalCloud.builder`): the variables file is
        pointed at the host lent (its SSH port, key pair and key, none of which shape the
        image), a new builder as on AWS: one no build has used, or relaunched with nothing an
        earlier bake wrote (`BuildHost.relaunch`), made to look like the family's AMI
        (`family_root.look_like`: a command whose package the AMI lacks is not there until
        a role installs the package), and for a GPU spec like its GPU AMI
        (`gpu_base.look_like_gpu_base`: the NVIDIA packages, modules, locks and runtime)."""
        if self.kind != "local":
            yield Build(rendered)
            return
        from factory import render

        with self.local.builder() as (index, host):
            family = rendered.variables.get("family")
            if family:  # the builder is an instance of the family's AMI: only its packages' commands
                from factory.local.builder.family_root import LOCAL_POOL, look_like

                look_like(host, family, keep=LOCAL_POOL)
                if rendered.variables.get("accelerator") == "nvidia":  # the family's ECS GPU-optimized AMI
                    from factory.local.builder.gpu_base import look_like_gpu_base

                    look_like_gpu_base(host, family)
            target = self.local.build_target(region, index=index)
            yield Build(render.with_variables(rendered, {
                "ssh_host": target.ssh_host, "ssh_port": int(target.ssh_port),
                "ssh_keypair_name": target.keypair_name, "ssh_private_key_file": target.private_key_file,
            }), host=host, state_dir=self.local.state_dir)

    def builders(self, jobs: int) -> None:
        """Before `jobs` builds run at once. On AWS, nothing. On the local cloud, a build
        host for each (`LocalCloud.ensure_build_hosts`)."""
        if self.kind == "local":
            self.local.ensure_build_hosts(jobs)

    def image_target(self, region: str):
        """The build target whose image-shaping settings a bake here uses, with no side
        effect (no key pair imported): what an AMI's image hash is checked against."""
        if self.kind == "local":
            from dataclasses import replace

            from factory.config import load_config

            return replace(self.local.build_target(region, import_key=False), **_local_builder_settings(load_config(self.config_path).builder))
        return self.target(region)

    def register_config(self, path: Path | None = None):
        """The register step's settings: `path`, else ./factory.yaml (or defaults). The local
        cloud, like AWS, uses Batch's service-linked role unless the file names a role."""
        from factory.config import load_config

        return load_config(path or self.config_path)

    def packer_env(self, region: str) -> dict[str, str]:
        """The environment Packer runs in. On the local cloud: moto's endpoint and dummy
        keys, and none of the user's session token or profile (never sent to moto).
        `AWS_EXECUTION_ENV` marks Packer's AWS calls (the AWS SDKs add `exec-env/VALUE` to
        their user agent), so CloudTrail, and the local cloud's call log that proves
        `factory iam-policy`, can tell them from other callers. On the local cloud Packer
        also polls as often as the local cloud's states change (`PACKER_POLL_DELAY_SECONDS`)."""
        env = dict(os.environ, AWS_EXECUTION_ENV=PACKER_EXECUTION_ENV)
        if self.kind == "local":
            from factory.local.aws.moto_server import PACKER_POLL_DELAY_SECONDS, scrub_env

            env = scrub_env(env)
            env.update(self.local.env(region))
            env["AWS_POLL_DELAY_SECONDS"] = PACKER_POLL_DELAY_SECONDS
        return env

    @classmethod
    def open(cls, kind: str) -> Cloud:
        """`aws`, or the running local cloud (`factory local up`); never starts one."""
        if kind not in CLOUDS:
            raise UsageError(f"--cloud must be one of {', '.join(CLOUDS)}, not {kind!r}")
        if kind == "aws":
            return cls("aws")
        from factory.local.cloud import running

        return cls("local", running())


def _local_builder_settings(builder: Any) -> dict[str, Any]:
    """factory.yaml's `builder:` on the local cloud: all but `ssh_interface` (its build host
    is reached on loopback; a Session Manager session cannot run here)."""
    return {
        "instance_types": dict(builder.instance_types),
        "subnet_id": builder.subnet or "",
        "associate_public_ip": builder.public_ip if builder.subnet or not builder.public_ip else None,
        "iam_instance_profile": builder.instance_profile or "",
        "kms_key_id": builder.kms_key or "",
    }
