"""`factory show TASK`: a task's image manifest and where the task stands in AWS.

Reads, all paged: the task's newest AMI (factory.register.find_ami; also the tier's AMI
when the tier runs on a larger task's image), the tier's launch template and its default
version, its job queue and the compute environment behind it. The manifest is the one the
bake fetched (build/<task>/image-manifest.json, or the bake's that made a shared AMI,
found by the AMI's content hash). Nothing is changed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

TAG_IMAGE_HASH = "factory:image-hash"


@dataclass
class TaskStatus:
    task: str
    region: str
    tier: str
    tier_ami_task: str  # the tier runs this task's AMI (its largest)
    status: str  # registered | outdated | partial | baked | not-available
    summary: str
    ami: dict[str, Any] | None = None
    tier_ami: str | None = None
    manifest_file: str | None = None
    manifest: dict[str, Any] | None = None
    launch_template: dict[str, Any] | None = None
    compute_environment: dict[str, Any] | None = None
    job_queue: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "region": self.region,
            "tier": self.tier,
            "tier_ami_task": self.tier_ami_task,
            "status": self.status,
            "summary": self.summary,
            "ami": self.ami,
            "tier_ami": self.tier_ami,
            "manifest_file": self.manifest_file,
            "manifest": self.manifest,
            "launch_template": self.launch_template,
            "compute_environment": self.compute_environment,
            "job_queue": self.job_queue,
            "notes": self.notes,
        }


def task_status(spec: Any, all_specs: list[Any], clients: Any, build_root: Path, max_tiers: int | None = None) -> TaskStatus:
    """Where `spec`'s task stands; a task with neither an AMI nor a fetched manifest was
    never baked, which is an error saying so."""
    from factory import image_manifest
    from factory.register import find_ami, resource_name, targets_for
    from factory.register.names import tag_dict
    from factory.register.tier_choice import tiers_in_account

    pool = {s.name: s for s in all_specs}
    pool[spec.name] = spec
    tiers, _ = tiers_in_account(list(pool.values()), max_tiers, lambda region: clients if region == clients.region else _other(clients, region))
    tier = next((t for t in tiers if spec.name in t.tasks), None)
    if tier is None:
        raise FactoryError(f"task {spec.name} is in no tier; run `factory size --all` to see the tiers")
    target = targets_for([pool[n] for n in tier.tasks], [tier])[0]
    name = resource_name(target.tier)

    image = find_ami(clients, spec.name, spec.image.architecture)
    owner = tag_dict(image.get("Tags")).get("factory:task") if image else None
    shared_from = owner if owner and owner != spec.name else None  # reused by a bake of this task (register.ami.serves)
    if image is None:
        # An AMI baked for another task with the same content (the bake shared it) carries
        # that task's name: found through the content hash of this task's fetched manifest.
        own = image_manifest.find(build_root, spec.name)
        if own is not None and own[1].get("image_hash"):
            from factory.bake.images import find_image

            image = find_image(clients.ec2(), own[1]["image_hash"])
            shared_from = tag_dict(image.get("Tags")).get("factory:task") if image else None
    digest = tag_dict(image.get("Tags")).get(TAG_IMAGE_HASH) if image else None
    found = image_manifest.find(build_root, spec.name, digest)
    if image is None and found is None:
        raise FactoryError(
            f"task {spec.name} has never been baked: no available AMI tagged factory:task={spec.name} "
            f"({spec.image.architecture}) in {spec.region}, and no {Path(build_root) / spec.name / image_manifest.FILE_NAME}. "
            f"Run `factory bake {spec.name}`"
        )
    st = TaskStatus(task=spec.name, region=spec.region, tier=target.tier, tier_ami_task=target.ami_task, status="", summary="")
    if image is not None:
        st.ami = {
            "id": image["ImageId"],
            "name": image.get("Name"),
            "state": image.get("State"),
            "created": image.get("CreationDate"),
            "tags": dict(sorted(tag_dict(image.get("Tags")).items())),
        }
    if shared_from and image is not None:
        st.notes.append(f"{image['ImageId']} was baked for task {shared_from}; {spec.name} shares it (same content hash)")
    if found is not None:
        st.manifest_file, st.manifest = str(found[0]), found[1]
    elif image is not None:
        st.notes.append(
            f"no fetched manifest for {image['ImageId']} under {build_root} (it was baked elsewhere); "
            f"it is on the image at {image_manifest.ON_IMAGE}, its headline in the AMI's tags"
        )
    if image is not None and found is not None and found[1].get("image_hash") != digest:
        st.notes.append(f"{found[0]} describes another image than {image['ImageId']} (content hash differs)")

    tier_image = image if target.ami_task == spec.name else find_ami(clients, target.ami_task, target.architecture)
    st.tier_ami = tier_image["ImageId"] if tier_image else None
    st.launch_template = _launch_template(clients.ec2(), name)
    st.job_queue, st.compute_environment = _queue_and_environment(clients.batch(), name)
    st.status, st.summary = _stand(st, name)
    return st


def _launch_template(ec2: Any, name: str) -> dict[str, Any] | None:
    from factory.aws import aws_errors
    from factory.register.reads import paged

    with aws_errors(f"reading launch template {name}"):
        # A name filter (not LaunchTemplateNames, which fails for a missing name): paged.
        found = list(paged(ec2, "describe_launch_templates", "LaunchTemplates",
                           Filters=[{"Name": "launch-template-name", "Values": [name]}]))
        found = [lt for lt in found if lt.get("LaunchTemplateName") == name]
        if not found:
            return None
        lt = found[0]
        versions = list(paged(ec2, "describe_launch_template_versions", "LaunchTemplateVersions",
                              LaunchTemplateId=lt["LaunchTemplateId"], Versions=["$Default"]))
    data = versions[0].get("LaunchTemplateData", {}) if versions else {}
    return {
        "name": name,
        "id": lt["LaunchTemplateId"],
        "default_version": int(lt["DefaultVersionNumber"]),
        "latest_version": int(lt["LatestVersionNumber"]),
        "image_id": data.get("ImageId"),
        "volume_gib": next((b.get("Ebs", {}).get("VolumeSize") for b in data.get("BlockDeviceMappings", []) if b.get("Ebs")), None),
    }


def _queue_and_environment(batch: Any, name: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """The tier's job queue and the compute environment it sends jobs to (after a blue/green
    replacement that one is `factory-<tier>-<hash>`); without a queue, `factory-<tier>`."""
    from factory.register.reads import compute_environments, job_queues

    queues = [q for q in job_queues(batch, [name]) if q.get("status") not in ("DELETING", "DELETED")]
    queue = None
    wanted = [name]
    if queues:
        q = queues[0]
        order = sorted(q.get("computeEnvironmentOrder", []), key=lambda o: o.get("order", 0))
        queue = {
            "name": q["jobQueueName"],
            "arn": q.get("jobQueueArn"),
            "state": q.get("state"),
            "status": q.get("status"),
            "compute_environments": [o["computeEnvironment"] for o in order],
        }
        wanted = queue["compute_environments"][:1] or [name]
    envs = [c for c in compute_environments(batch, wanted) if c.get("status") not in ("DELETING", "DELETED")]
    if not envs:
        return queue, None
    c = envs[0]
    lt = (c.get("computeResources") or {}).get("launchTemplate") or {}
    version = lt.get("version")
    env = {
        "name": c["computeEnvironmentName"],
        "arn": c.get("computeEnvironmentArn"),
        "state": c.get("state"),
        "status": c.get("status"),
        "launch_template": lt.get("launchTemplateName") or lt.get("launchTemplateId"),
        "launch_template_version": int(version) if str(version or "").isdigit() else version,
    }
    return queue, env


def _stand(st: TaskStatus, name: str) -> tuple[str, str]:
    """(status, one line) from what was read."""
    lt, env, queue = st.launch_template, st.compute_environment, st.job_queue
    if st.ami is None:
        return "not-available", (
            f"no available AMI tagged factory:task={st.task} (deregistered or pruned?); the manifest is from "
            f"the last bake here. Run `factory bake {st.task}`"
        )
    missing = [what for what, have in (("launch template", lt), ("compute environment", env), ("job queue", queue)) if not have]
    if len(missing) == 3:
        return "baked", f"baked {st.ami['id']}, not registered: run `factory register {st.task}`"
    if missing:
        return "partial", f"partly registered (no {', '.join(missing)} {name}): run `factory register {st.task}` to finish"
    assert lt is not None and env is not None and queue is not None
    if st.tier_ami and lt["image_id"] != st.tier_ami:
        return "outdated", (
            f"queue {queue['name']} runs {lt['image_id']}, not the newest AMI of tier {st.tier} ({st.tier_ami}): "
            f"run `factory register {st.task}`"
        )
    if env["launch_template_version"] != lt["default_version"]:
        return "outdated", (
            f"compute environment {env['name']} runs launch template version {env['launch_template_version']}, "
            f"not the default {lt['default_version']}: run `factory register {st.task}`"
        )
    if queue["state"] != "ENABLED" or env["state"] != "ENABLED":
        return "partial", f"queue {queue['name']} is {queue['state']}, compute environment {env['name']} {env['state']}"
    shared = f" (tier {st.tier}'s AMI, baked for {st.tier_ami_task})" if st.tier_ami_task != st.task else ""
    return "registered", (
        f"registered: queue {queue['name']} runs {lt['image_id']}{shared} through launch template {lt['name']} "
        f"version {lt['default_version']} and compute environment {env['name']}"
    )


def text(st: TaskStatus) -> str:
    """The human-readable report `factory show` prints."""
    lines = [f"{st.task} ({st.region}, tier {st.tier}): {st.summary}"]

    def row(label: str, value: Any) -> None:
        lines.append(f"  {label:<20} {value}")

    if st.ami:
        row("AMI", f"{st.ami['id']} {st.ami['name'] or ''} ({st.ami['state']}, created {st.ami['created']})")
        row("image hash", st.ami["tags"].get(TAG_IMAGE_HASH, "-"))
        row("base AMI", st.ami["tags"].get("factory:base-ami", "-"))
    lt, env, queue = st.launch_template, st.compute_environment, st.job_queue
    row("launch template", f"{lt['name']} default version {lt['default_version']} (latest {lt['latest_version']}), "
        f"AMI {lt['image_id']}, {lt['volume_gib']} GiB" if lt else "none")
    row("compute environment", f"{env['name']} {env['state']} {env['status']}, launch template version "
        f"{env['launch_template_version']}" if env else "none")
    row("job queue", f"{queue['name']} {queue['state']} {queue['status']}" if queue else "none")
    m = st.manifest
    if m is None:
        if st.ami:
            for key, value in st.ami["tags"].items():
                if key in ("factory:os", "factory:kernel", "factory:docker", "factory:ecs-agent", "factory:awscli"):
                    row(key.removeprefix("factory:"), value)
    else:
        from factory.image_manifest import ON_IMAGE

        lines.append(f"image manifest: {st.manifest_file} (on the image: {ON_IMAGE})")
        os_ = m.get("os") or {}
        docker = m.get("docker") or {}
        row("task / base AMI", f"{m.get('task')} / {m.get('base_ami')}")
        row("OS", f"{os_.get('name')} {os_.get('version')} ({os_.get('architecture')})")
        row("kernel", m.get("kernel"))
        row("Docker", f"{docker.get('version')}, {docker.get('storage_driver')}, data root {docker.get('data_root')} "
            f"({docker.get('data_root_size_gib')} GiB at bake time)")
        row("containerd", (m.get("containerd") or {}).get("version") or "none")
        ecs = m.get("ecs_agent")
        row("ECS agent", f"{ecs['version']} (package {ecs['package']})" if ecs else "none (no ECS agent package)")
        aws = m.get("awscli") or {}
        row("AWS CLI", f"{aws.get('path')} {aws.get('version') or '(did not answer)'}")
        row("Miniconda", f"{(m.get('miniconda') or {}).get('prefix')}, conda {(m.get('miniconda') or {}).get('version')}")
        check = m.get("bake_check")
        if check:
            ok = all(check.get(k) for k in ("container_ran", "space_ok", "aws_ok"))
            row("bake check", f"{'passed' if ok else 'FAILED'}: a container saw {check.get('size_gib')} GiB "
                f"(at least {check.get('min_gib')}) and ran {check.get('aws_version')}")
        else:
            row("bake check", "no report")
        pk = m.get("packages") or {}
        row("packages", f"{pk.get('count')} ({pk.get('manager')}); --json lists them")
    lines += [f"  note: {n}" for n in st.notes]
    return "\n".join(lines)


def _other(clients: Any, region: str) -> Any:
    from factory.aws import Clients

    return Clients(region=region, endpoint_url=clients.endpoint_url)
