"""Delete what factory made and nothing uses any more: retired tiers, old versions, old AMIs.

A tier no spec uses any more (its `factory:tier` tag names none of the tiers the specs
make now) loses its job queue (disabled, then deleted), its compute environments
(disabled, then deleted once the queue has let them go) and its launch template. Then, for
the tiers still in use, kept: each managed launch template's default version, every version a compute
environment pins, and the newest `keep`; each task's newest `keep` available AMIs (a
pending one is never touched), every AMI a kept version uses, and every AMI anything else
in the account uses (DescribeImageReferences: instances not terminated, launch templates,
SSM parameters). An AMI AWS refuses to deregister is reported `failed` and the rest goes
on. Only resources tagged by factory are considered; every list is read
to its last page (a version pinned by an environment on page 2 is still pinned).

Volumes the grow agent created but never attached (its instance died in between) are
deleted too (factory.leaked_volumes), and so are builders a killed bake left running:
instances tagged with an image's content hash launched more than `builder_hours` ago,
with what they left (factory.packer_leftovers: temporary AMIs, snapshots, Packer's
security group). An AMI goes with its snapshots in one call (`DeregisterImage` with
`DeleteAssociatedSnapshots`): deleting the snapshots right after deregistering races
(`InvalidSnapshot.InUse`). `DeleteLaunchTemplateVersions` answers 200 with a list of the
versions it could not delete: those are reported as `failed`, never as deleted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from factory.aws import Clients, aws_errors
from factory.errors import AwsError, UsageError
from factory.register import compute_environment, job_queue
from factory.register.names import TAG_MANAGED, TAG_TASK, TAG_TIER, tag_dict, tasks_from_tags
from factory.register.reads import compute_environments, job_queues, paged
from factory.register.results import Change
from factory.register.run import Run
from factory.register.waits import Waiter

VERSIONS_PER_DELETE = 200  # DeleteLaunchTemplateVersions takes at most 200 versions


@dataclass
class PruneResult:
    dry_run: bool
    keep: int
    changes: list[Change]

    @property
    def failed(self) -> list[Change]:
        return [c for c in self.changes if c.action == "failed"]

    def to_json(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "keep": self.keep, "changes": [c.to_json() for c in self.changes]}


def prune(
    clients: Clients,
    keep: int = 3,
    dry_run: bool = True,
    tiers_in_use: set[str] | None = None,
    waiter: Waiter | None = None,
    tasks_in_use: set[str] | None = None,
    builder_hours: float = 6.0,
    force: bool = False,
    copy_regions: Sequence[Clients] = (),
) -> PruneResult:
    """`dry_run` (the CLI's default) lists and deletes nothing. `tiers_in_use`: the tiers the
    specs make now (None: retire no tier); `tasks_in_use`: the specs' tasks (a retired tier's
    task with no spec loses its `/factory/<task>/ami-id` parameter); `builder_hours`: a
    builder launched longer ago was left by a killed bake (no bake runs that long); `force`:
    retire a tier whose queue still has jobs (AWS terminates them) instead of draining it.
    `copy_regions`: the regions this region's AMIs are distributed to; an AMI a copy there
    is still being made from is kept (factory.distribute.copies: the copy's factory:copy-of)."""
    if keep < 1:
        raise UsageError(f"--keep must be at least 1 (got {keep})")
    from factory.config import FactoryConfig

    run = Run(FactoryConfig(), dry_run, waiter or Waiter())
    ec2, batch = clients.ec2(), clients.batch()
    changes: list[Change] = []
    with aws_errors("listing factory's launch templates"):
        lts = list(paged(ec2, "describe_launch_templates", "LaunchTemplates", Filters=[{"Name": f"tag:{TAG_MANAGED}", "Values": ["true"]}]))
    if tiers_in_use is not None:
        lts, retired_tasks = _retire_tiers(run, ec2, batch, lts, tiers_in_use, changes, force)
        if tasks_in_use is not None:
            _retire_parameters(clients.ssm(), retired_tasks - tasks_in_use, dry_run, changes)
    pinned: dict[str, set[str]] = {}
    for ce in compute_environments(batch):
        spec = (ce.get("computeResources") or {}).get("launchTemplate") or {}
        for key in (spec.get("launchTemplateName"), spec.get("launchTemplateId")):
            if key:
                pinned.setdefault(key, set()).add(str(spec.get("version")))
    used_amis: set[str] = set()
    for lt in lts:
        used_amis |= _prune_versions(ec2, lt, pinned, keep, dry_run, changes)
    _prune_amis(ec2, used_amis, keep, dry_run, changes, copy_regions)
    _prune_leaked_volumes(ec2, dry_run, changes)
    _prune_stray_builders(ec2, builder_hours, dry_run, run.waiter, changes)
    return PruneResult(dry_run, keep, changes)


def _prune_stray_builders(ec2: Any, hours: float, dry_run: bool, waiter: Waiter, changes: list[Change]) -> None:
    """Builders a killed bake left running (factory.packer_leftovers.stray_builders)."""
    from datetime import UTC, datetime, timedelta

    from factory import packer_leftovers
    from factory.errors import FactoryError

    now = datetime.now(UTC)
    for b in packer_leftovers.stray_builders(ec2, timedelta(hours=hours), now):
        why = (f"{b.state} builder of task {b.task or '?'} launched {b.hours_since_launch(now):.1f} h ago (longer than prune.builder_hours, {hours:g} h): "
               f"the bake that launched it was killed; terminated with what it left (temporary AMIs, snapshots, Packer's security group)")
        if dry_run:
            changes.append(Change("builder", b.instance_id, "delete", why))
            continue
        try:
            done = packer_leftovers.sweep_builders(ec2, [b], waiter=waiter)
        except FactoryError as exc:
            changes.append(Change("builder", b.instance_id, "failed", f"{why}: {exc.message}"))
        else:
            changes.append(Change("builder", b.instance_id, "delete", f"{why}: {'; '.join(done)}"))


def _prune_leaked_volumes(ec2: Any, dry_run: bool, changes: list[Change]) -> None:
    """Volumes the grow agent made whose instance is gone (created, never attached)."""
    from factory.leaked_volumes import delete_leaked, find_leaked

    with aws_errors("looking for volumes the grow agent left behind"):
        leaked = find_leaked(ec2)
    if not leaked:
        return
    why = {lv.volume_id: f"{lv.size_gib} GiB, made by the grow agent for task {lv.task or '?'} on {lv.instance_id or 'no instance'}, which is gone; available since {lv.created}" for lv in leaked}
    if dry_run:
        changes += [Change("volume", v, "delete", reason) for v, reason in why.items()]
        return
    with aws_errors("deleting volumes the grow agent left behind"):
        results = delete_leaked(ec2, leaked)
    for volume_id, error in results:
        changes.append(Change("volume", volume_id, "failed" if error else "delete", f"{why[volume_id]}: {error}" if error else why[volume_id]))


def _managed(tags: dict[str, str] | None) -> bool:
    return (tags or {}).get(TAG_MANAGED) == "true"


def _retire_tiers(
    run: Run, ec2: Any, batch: Any, lts: list[dict[str, Any]], in_use: set[str], changes: list[Change], force: bool = False
) -> tuple[list[dict[str, Any]], set[str]]:
    """Queue, environments and launch template of every managed tier no spec uses; returns
    the launch templates that stay and the retired tiers' tasks. A queue that still has jobs
    (factory.register.live_jobs) is only disabled: its tier waits, whole, for a later prune
    (its launch template stays, so do the AMIs it names: the queue's RUNNABLE jobs may still
    start instances). `force` deletes it anyway, saying which jobs that terminates."""
    from factory.register import live_jobs

    queues = [q for q in job_queues(batch) if _managed(q.get("tags")) and q.get("status") != "DELETING"]
    envs = [c for c in compute_environments(batch) if _managed(c.get("tags")) and c.get("status") != "DELETING"]
    retired = sorted({(r.get("tags") or {}).get(TAG_TIER, "") for r in queues + envs} | {tag_dict(lt.get("Tags")).get(TAG_TIER, "") for lt in lts})
    retired = [t for t in retired if t and t not in in_use]
    retired_tasks: set[str] = set()
    gone: list[str] = []
    for tier in retired:
        why = f"tier {tier} is used by no spec any more"
        tier_queues = [q for q in queues if q["tags"].get(TAG_TIER) == tier]
        held = {q["jobQueueName"]: live_jobs.live_jobs(batch, q["jobQueueName"]) for q in tier_queues}
        if any(held.values()) and not force:
            for q in tier_queues:
                name = q["jobQueueName"]
                jobs = held[name]
                if not jobs:
                    continue
                live_jobs.drain(
                    run.dry_run, changes, "job-queue", name,
                    f"{why}, but {live_jobs.named(jobs)} still need it: disabled (no new jobs), deleted with its tier by a later prune once "
                    "they have ended (--force deletes it now, and AWS terminates them)",
                    q.get("state"), lambda n=name: batch.update_job_queue(jobQueue=n, state="DISABLED"),
                )
            continue
        gone.append(tier)
        for q in tier_queues:
            retired_tasks |= set(tasks_from_tags(q["tags"]))
            name = q["jobQueueName"]
            jobs = held[name]
            changes.append(Change(
                "job-queue", name, "delete",
                f"{why} (tasks {', '.join(tasks_from_tags(q['tags'])) or '?'})" + (f"; --force: AWS terminates {live_jobs.named(jobs)}" if jobs else ""),
            ))
            if run.dry_run:
                continue
            if q.get("state") != "DISABLED":
                with aws_errors(f"disabling job queue {name}"):
                    batch.update_job_queue(jobQueue=name, state="DISABLED")
            job_queue.wait_until_settled(run, batch, name, None, None, state="DISABLED")
            with aws_errors(f"deleting job queue {name}"):
                batch.delete_job_queue(jobQueue=name)
        # The queue is gone (or never was): no job can reach these environments any more.
        compute_environment.retire(run, batch, [c for c in envs if c["tags"].get(TAG_TIER) == tier], f"no queue ({why})", changes, force=force)
        for lt in (lt for lt in lts if tag_dict(lt.get("Tags")).get(TAG_TIER) == tier):
            name = lt["LaunchTemplateName"]
            changes.append(Change("launch-template", name, "delete", f"{why}, with all its versions"))
            if not run.dry_run:
                with aws_errors(f"deleting launch template {name}"):
                    ec2.delete_launch_template(LaunchTemplateId=lt["LaunchTemplateId"])
    return [lt for lt in lts if tag_dict(lt.get("Tags")).get(TAG_TIER) not in gone], retired_tasks


def _retire_parameters(ssm: Any, gone: set[str], dry_run: bool, changes: list[Change]) -> None:
    """The AMI parameter of every task of a retired tier that no spec names any more."""
    from factory.register.parameter import parameter_name

    for task in sorted(gone):
        name = parameter_name(task)
        changes.append(Change("parameter", name, "delete", f"task {task} has no spec any more"))
        if dry_run:
            continue
        with aws_errors(f"deleting parameter {name}"):
            try:
                ssm.delete_parameter(Name=name)
            except ssm.exceptions.ParameterNotFound:
                pass


def _prune_versions(ec2: Any, lt: dict[str, Any], pinned: dict[str, set[str]], keep: int, dry_run: bool, changes: list[Change]) -> set[str]:
    """Delete one launch template's unneeded versions; returns the AMIs its kept versions use."""
    lt_id, name = lt["LaunchTemplateId"], lt["LaunchTemplateName"]
    with aws_errors(f"reading launch template {name} versions"):
        versions = list(paged(ec2, "describe_launch_template_versions", "LaunchTemplateVersions", LaunchTemplateId=lt_id))
    versions.sort(key=lambda v: int(v["VersionNumber"]), reverse=True)
    keep_numbers = {str(v["VersionNumber"]) for v in versions[:keep]}
    keep_numbers.add(str(lt["DefaultVersionNumber"]))
    keep_numbers |= pinned.get(name, set()) | pinned.get(lt_id, set())
    doomed = sorted((str(v["VersionNumber"]) for v in versions if str(v["VersionNumber"]) not in keep_numbers), key=int)
    used = {v["LaunchTemplateData"]["ImageId"] for v in versions if str(v["VersionNumber"]) in keep_numbers and v["LaunchTemplateData"].get("ImageId")}
    if not doomed:
        return used
    why = "not default, not pinned, not among the newest"
    if dry_run:
        changes.append(Change("launch-template", name, "delete", f"versions {', '.join(doomed)} ({why} {keep})"))
        return used
    deleted: list[str] = []
    failures: list[str] = []
    with aws_errors(f"deleting versions of launch template {name}"):
        for i in range(0, len(doomed), VERSIONS_PER_DELETE):
            answer = ec2.delete_launch_template_versions(LaunchTemplateId=lt_id, Versions=doomed[i : i + VERSIONS_PER_DELETE])
            deleted += [str(v["VersionNumber"]) for v in answer.get("SuccessfullyDeletedLaunchTemplateVersions") or []]
            for v in answer.get("UnsuccessfullyDeletedLaunchTemplateVersions") or []:
                error = v.get("ResponseError") or {}
                failures.append(f"version {v.get('VersionNumber')}: {error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": "))
    if deleted:
        changes.append(Change("launch-template", name, "delete", f"versions {', '.join(deleted)} ({why} {keep})"))
    if failures:
        changes.append(Change("launch-template", name, "failed", "AWS kept " + "; ".join(failures)))
    return used


def _pending_copies(copy_regions: Sequence[Clients], ami_ids: list[str]) -> dict[str, list[str]]:
    """source AMI -> the copies (`region id`) still being made from it in `copy_regions`."""
    from factory.distribute.copies import COPY_OF_TAG

    found: dict[str, list[str]] = {}
    if not ami_ids:
        return found
    for clients in copy_regions:
        with aws_errors(f"looking for copies still being made in {clients.region}"):
            for image in paged(clients.ec2(), "describe_images", "Images", Owners=["self"],
                               Filters=[{"Name": f"tag:{COPY_OF_TAG}", "Values": ami_ids}, {"Name": "state", "Values": ["pending"]}]):
                source = tag_dict(image.get("Tags")).get(COPY_OF_TAG)
                if source in ami_ids and image.get("State") == "pending":
                    found.setdefault(source, []).append(f"{clients.region} {image['ImageId']}")
    return found


def _prune_amis(ec2: Any, used_amis: set[str], keep: int, dry_run: bool, changes: list[Change], copy_regions: Sequence[Clients] = ()) -> None:
    """Each task's AMIs beyond its newest `keep` available ones, unless a kept launch
    template version uses one, or anything else in the account does (DescribeImageReferences:
    an instance not terminated, another launch template, an SSM parameter). A pending AMI (a
    bake is making it) is never touched and, like a failed or disabled one, never counts
    towards `keep`. One AMI AWS refuses to deregister (deregistration protection, say) is
    reported as failed and the rest go on."""
    with aws_errors("listing factory's AMIs"):
        images = list(paged(ec2, "describe_images", "Images", Owners=["self"], Filters=[{"Name": "tag-key", "Values": [TAG_TASK]}]))
    by_task: dict[str, list[dict[str, Any]]] = {}
    for image in images:
        by_task.setdefault(tag_dict(image.get("Tags")).get(TAG_TASK, "?"), []).append(image)
    doomed: list[tuple[str, dict[str, Any]]] = []
    for task, group in sorted(by_task.items()):
        group.sort(key=lambda i: (i.get("CreationDate", ""), i["ImageId"]), reverse=True)
        kept = {i["ImageId"] for i in [i for i in group if i.get("State") == "available"][:keep]}
        doomed += [(task, i) for i in group if i["ImageId"] not in kept | used_amis and i.get("State") != "pending"]
    referenced = _image_references(ec2, [i["ImageId"] for _, i in doomed])
    copying = _pending_copies(copy_regions, [i["ImageId"] for _, i in doomed])
    for task, image in doomed:
        ami = image["ImageId"]
        if ami in copying:
            changes.append(Change("ami", ami, "unchanged", f"task {task}: a copy is still being made from it ({', '.join(copying[ami])})"))
            continue
        if ami in referenced:
            changes.append(Change("ami", ami, "unchanged", f"task {task}: older than the newest {keep} available, but still used by {', '.join(referenced[ami])}"))
            continue
        state = image.get("State", "?")
        reason = (f"task {task}, {image.get('CreationDate', '?')}" + (f", {state}" if state != "available" else "")
                  + f": not among the newest {keep} available and used by no kept launch template version or anything else")
        if dry_run:
            changes.append(Change("ami", ami, "delete", reason + ", with its snapshots"))
            continue
        try:
            with aws_errors(f"deregistering AMI {ami}"):
                answer = ec2.deregister_image(ImageId=ami, DeleteAssociatedSnapshots=True)
        except AwsError as exc:
            changes.append(Change("ami", ami, "failed", f"{reason}; AWS refused: {exc.message}"))
            continue
        kept_snaps = [r["SnapshotId"] for r in answer.get("DeleteSnapshotResults") or [] if r.get("ReturnCode") != "success"]
        gone = [r["SnapshotId"] for r in answer.get("DeleteSnapshotResults") or [] if r.get("ReturnCode") == "success"]
        changes.append(Change("ami", ami, "delete", reason + (f", snapshots {', '.join(gone)}" if gone else "")))
        if kept_snaps:
            changes.append(Change("snapshot", ", ".join(kept_snaps), "failed", f"AWS kept the snapshots of {ami} (DeleteSnapshotResults); delete them by hand"))


# What else may use an AMI (DescribeImageReferences). Instances in any state but terminated;
# launch templates at AWS's default depth (the newest 10 versions); parameters' current values.
_REFERENCE_TYPES = [
    {"ResourceType": "ec2:Instance",
     "ResourceTypeOptions": [{"OptionName": "state-name", "OptionValues": ["pending", "running", "shutting-down", "stopping", "stopped"]}]},
    {"ResourceType": "ec2:LaunchTemplate"},
    {"ResourceType": "ssm:Parameter"},
]
IMAGES_PER_REFERENCE_CHECK = 10  # DescribeImageReferences ImageId.N: at most 10


def _image_references(ec2: Any, ami_ids: list[str]) -> dict[str, list[str]]:
    """AMI id -> the ARNs of what uses it, asked of EC2 ten AMIs at a time."""
    found: dict[str, list[str]] = {}
    for i in range(0, len(ami_ids), IMAGES_PER_REFERENCE_CHECK):
        chunk = ami_ids[i : i + IMAGES_PER_REFERENCE_CHECK]
        with aws_errors("asking EC2 what still uses the AMIs prune would deregister (DescribeImageReferences)"):
            for ref in paged(ec2, "describe_image_references", "ImageReferences", ImageIds=chunk, ResourceTypes=_REFERENCE_TYPES):
                found.setdefault(ref["ImageId"], []).append(ref.get("Arn") or ref.get("ResourceType", "?"))
    return found
