"""`factory status`: is each task's image current?

Per task: the AMI its tier runs (the launch template version its compute environment
pins), the base that AMI was baked on, the base AWS recommends now (the family's
ECS-optimized SSM parameter; a pinned `ami-...` is its own recommendation), whether the
spec or the image content changed since the bake, the pinned launch template version,
the queue's state and the task's `/factory/<task>/ami-id` parameter.

The base a bake would use is the lock's (factory.base_lock: `factory.lock`, or the local
cloud's); status compares the lock with what AWS recommends now and says when AWS
recommends a newer base, or one that went backwards (AWS rolled its parameter back:
awslabs/amazon-eks-ami#924): a note naming `factory lock --update`, not staleness, since a
bake still uses the lock. A base the lock lacks is one a bake would resolve and add: AWS's
recommendation is then what a bake would use.

A task is **stale** when a bake would make another AMI: it has no registered AMI, its AMI
was baked on another base than a bake would use now, or the image content changed (factory.image_identity's image hash, taken
now over the AMI's own base, differs from the one the AMI carries). A spec change that
leaves the image alone (a new volume size in launch-template mode) is not staleness: a
register applies it, and the status says so.

AWS is read in batches per region, not once per task or tier (factory.register.region_reads):
every factory AMI in one paged read, every launch template and the default and latest
version of each in one paged read each, every compute environment and queue in one paged
read each, the parameters (the tasks' and the bases') ten to a GetParameters call, the
rollback holds in one paged DescribeParameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from factory.aws import aws_errors
from factory.register.names import TAG_BASE_AMI, TAG_IMAGE_HASH, TAG_MANAGED, TAG_SPEC_HASH, TAG_TASK, TAG_TIER, tag_dict


@dataclass
class TaskStatus:
    task: str
    region: str
    tier: str
    ami_task: str  # the tier's largest task: its AMI is the tier's
    account: str = ""  # a copy_to account (distribute.copy_to, register: true); "": the caller's
    ami_in_use: str | None = None
    base_ami: str | None = None  # the base the AMI in use was baked on (its factory:base-ami)
    recommended_base: str | None = None
    locked_base: str | None = None  # the lock's image of the base in this region (None: not locked)
    lock_state: str | None = None  # the lock against AWS: same | newer | backwards | changed | new | missing (base_lock.BaseStatus)
    spec_changed: bool | None = None
    image_changed: bool | None = None
    launch_template: str | None = None
    launch_template_version: int | None = None
    compute_environment: str | None = None
    queue: str | None = None
    queue_state: str | None = None  # "ENABLED/VALID", ...
    parameter: str | None = None  # what /factory/<task>/ami-id names
    grow_fired: list[str] = field(default_factory=list)  # instances whose grow agent added space (factory:grow-fired)
    stale: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def base_current(self) -> bool | None:
        wanted = self.locked_base or self.recommended_base
        if not self.base_ami or not wanted:
            return None
        return self.base_ami == wanted

    def to_json(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "region": self.region,
            "account": self.account,
            "tier": self.tier,
            "ami_task": self.ami_task,
            "ami_in_use": self.ami_in_use,
            "base_ami": self.base_ami,
            "recommended_base": self.recommended_base,
            "locked_base": self.locked_base,
            "lock_state": self.lock_state,
            "base_current": self.base_current,
            "spec_changed": self.spec_changed,
            "image_changed": self.image_changed,
            "launch_template": {"name": self.launch_template, "version": self.launch_template_version},
            "compute_environment": self.compute_environment,
            "job_queue": {"name": self.queue, "state": self.queue_state},
            "parameter": self.parameter,
            "grow_fired": list(self.grow_fired),
            "stale": bool(self.stale),
            "reasons": list(self.stale),
            "notes": list(self.notes),
        }


@dataclass
class StatusReport:
    tasks: list[TaskStatus]
    draining: list[str] = field(default_factory=list)  # retired queues and environments still held by jobs

    @property
    def stale(self) -> list[TaskStatus]:
        return [t for t in self.tasks if t.stale]

    def to_json(self) -> dict[str, Any]:
        return {"ok": not self.stale, "stale": [t.task for t in self.stale], "tasks": [t.to_json() for t in self.tasks], "draining": self.draining}


def task_status(specs: Sequence[Any], all_specs: Sequence[Any], cloud: Any, config: Any = None, lock: Any = None) -> StatusReport:
    """The status of `specs` (tiers chosen over `all_specs`, as register chooses them);
    `lock` (factory.base_lock.BaseLock) holds the bases a bake would use (None: none locked)."""
    from factory import base_lock
    from factory.register.targets import targets_for
    from factory.register.tier_choice import tiers_in_account

    max_tiers = getattr(config, "max_tiers", None)
    reads: dict[str, Any] = {}  # each region read once, for the tier choice and the status
    tiers, _ = tiers_in_account(list(all_specs), max_tiers, cloud.clients, reads=reads)
    targets = {t.tier: t for t in targets_for(list(all_specs), tiers)}
    wanted = [s.name for s in specs]
    tier_of = {task: t for t in targets.values() for task in t.tasks}
    out: dict[str, TaskStatus] = {}
    by_region: dict[str, list[Any]] = {}
    for name in wanted:
        by_region.setdefault(tier_of[name].region, []).append(tier_of[name])
    builder_hours = getattr(config, "prune_builder_hours", 6.0)
    lock = lock if lock is not None else base_lock.BaseLock(base_lock.default_path(cloud))
    draining: list[str] = []
    for region, region_targets in by_region.items():
        unique = list({t.tier: t for t in region_targets}.values())
        statuses, held = _region_status(region, unique, cloud, builder_hours, in_use=set(targets), reads=reads.get(region), lock=lock)
        draining += held
        for status in statuses:
            if status.task in wanted:
                out[status.task] = status
    chosen = [s for s in all_specs if s.name in wanted]
    copies = _copies_status(chosen, out, cloud, config, builder_hours, lock) if config is not None else []
    accounts = _accounts_status(chosen, [*out.values(), *copies], cloud, config, builder_hours, lock) if config is not None else []
    return StatusReport([out[n] for n in wanted] + copies + accounts, draining)


def _accounts_status(specs: Sequence[Any], ours: Sequence[TaskStatus], cloud: Any, config: Any, builder_hours: float,
                     lock: Any) -> list[TaskStatus]:
    """A row per copy_to account with `register: true`, task and region it has a copy in
    (reached through the role copy_to names): what that account's queue runs there, judged
    against what our account runs in the same region (the AMI it copies from). The base and
    the image are judged at home, as for our own target regions."""
    from factory.distribute.copies import COPY_OF_TAG
    from factory.distribute.other_accounts import other_accounts, regions_of, tiers_there

    runs = {(r.task, r.region): r for r in ours}
    rows: list[TaskStatus] = []
    for other in other_accounts(specs, config, cloud.clients, registered=True, image_target_for=cloud.image_target):
        for spec in other.specs:
            at_home = runs.get((spec.name, spec.region))
            for region in regions_of(spec, config):
                _, target = tiers_there(spec, region, other, config)
                statuses, _ = _region_status(region, [target], other, builder_hours, in_use={target.tier}, lock=lock)
                images = RegionImages(other.clients(region))
                mine = runs.get((spec.name, region))
                for row in statuses:
                    if row.task != spec.name:
                        continue
                    row.account = other.account
                    row.recommended_base = at_home.recommended_base if at_home else None
                    row.image_changed = at_home.image_changed if at_home else None
                    row.stale = [r for r in row.stale if not r.startswith(("AWS recommends base", "image content changed"))]
                    source = images.tags(row.ami_in_use).get(COPY_OF_TAG) if row.ami_in_use else None
                    if mine and mine.ami_in_use and row.ami_in_use and source != mine.ami_in_use:
                        row.stale.append(f"account {other.account} runs {row.ami_in_use} in {region}, "
                                         + (f"a copy of {source}" if source else "not a copy")
                                         + f", but this account runs {mine.ami_in_use} there: run `factory distribute {row.task} --register`")
                    rows.append(row)
    return rows


def _copies_status(specs: Sequence[Any], home: dict[str, TaskStatus], cloud: Any, config: Any, builder_hours: float, lock: Any) -> list[TaskStatus]:
    """A row per task and region it is distributed to (factory.yaml `distribute:`): what that
    region's queue runs, judged against the home region's row. The base and the image are
    judged at home (a base AMI id is regional, so a copy's `factory:base-ami` is the home
    region's); a copy is current when it is a copy (`factory:copy-of`) of the AMI home runs."""
    from dataclasses import replace

    from factory.distribute.copies import COPY_OF_TAG
    from factory.register.targets import targets_for
    from factory.tiers import tiers_for

    by_region: dict[str, list[Any]] = {}
    for spec in specs:
        for region in config.distribution_for(spec).targets(spec.region):
            by_region.setdefault(region, []).append(replace(spec, region=region))
    rows: list[TaskStatus] = []
    for region, moved in sorted(by_region.items()):
        tiers, _ = tiers_for(moved, getattr(config, "max_tiers", None))
        targets = list({t.tier: t for t in targets_for(moved, tiers)}.values())
        statuses, _ = _region_status(region, targets, cloud, builder_hours, in_use={t.tier for t in targets}, lock=lock)
        images = RegionImages(cloud.clients(region))
        for row in statuses:
            at_home = home.get(row.task)
            row.recommended_base = at_home.recommended_base if at_home else None
            row.image_changed = at_home.image_changed if at_home else None
            row.stale = [r for r in row.stale if not r.startswith(("AWS recommends base", "image content changed"))]
            source = images.tags(row.ami_in_use).get(COPY_OF_TAG) if row.ami_in_use else None
            if at_home and at_home.ami_in_use and row.ami_in_use and source != at_home.ami_in_use:
                row.stale.append(f"{region} runs {row.ami_in_use}, " + (f"a copy of {source}" if source else "not a copy")
                                 + f", but {at_home.region} runs {at_home.ami_in_use}: run `factory distribute {row.task} --register`")
            rows.append(row)
    return rows


class RegionImages:
    """Tags of the AMIs of one region, read one id at a time (a region has one AMI per tier in use)."""

    def __init__(self, clients: Any):
        self._ec2 = clients.ec2()
        self._tags: dict[str, dict[str, str]] = {}

    def tags(self, ami: str) -> dict[str, str]:
        if ami not in self._tags:
            from factory.aws import aws_errors

            with aws_errors(f"reading {ami}"):
                images = self._ec2.describe_images(ImageIds=[ami])["Images"]  # one id: one answer
            self._tags[ami] = tag_dict(images[0].get("Tags")) if images else {}
        return self._tags[ami]


def _region_status(
    region: str, targets: list[Any], cloud: Any, builder_hours: float = 6.0, in_use: set[str] | None = None, reads: Any = None,
    lock: Any = None,
) -> tuple[list[TaskStatus], list[str]]:
    from factory import base_lock
    from factory.image_identity import expected_image_hash
    from factory.register.parameter import held as parameter_held
    from factory.register.parameter import parameter_name
    from factory.register.region_reads import RegionReads

    clients = cloud.clients(region)
    ec2 = clients.ec2()
    reads = reads or RegionReads(clients)
    ces = {c["computeEnvironmentName"]: c for c in reads.compute_environments()}
    ce_by_arn = {c["computeEnvironmentArn"]: c for c in ces.values()}
    queues = reads.queues()
    tasks = [task for t in targets for task in t.tasks]
    bases = [base_lock.base_of(t.ami_spec)[1] for t in targets if not t.ami_spec.image.pinned_ami]
    # The tasks' parameters and the ECS-optimized base parameters: one batch of GetParameters.
    values = reads.parameters([parameter_name(t) for t in tasks] + sorted({b for b in bases if b}))
    parameters = {t: values[parameter_name(t)] for t in tasks}
    recommended = _recommended_bases(values, region)
    # The locked bases of the region, checked as a bake checks them (one DescribeImages): a
    # deprecated or deregistered one is said before a bake fails on it.
    locked = {base_lock.base_of(t.ami_spec)[0].name for t in targets if not t.ami_spec.image.pinned_ami}
    unusable = base_lock.check_images(lock, {region: locked}, cloud) if lock is not None else {}
    fired = _grow_fired(ec2)
    now = datetime.now(UTC)
    strays = _stray_builders(ec2, builder_hours, now)
    image_target = cloud.image_target(region)
    hashes: dict[str, str] = {}  # tiers of one family and base often have the same image: hash it once

    out: list[TaskStatus] = []
    for target in targets:
        spec = target.ami_spec
        rows = [TaskStatus(task=task, region=region, tier=target.tier, ami_task=target.ami_task, queue=target.name, parameter=parameters.get(task)) for task in target.tasks]
        key, base_parameter = base_lock.base_of(spec)
        aws_now = None if spec.image.pinned_ami else recommended.get(base_parameter or "")
        lock_status = None if spec.image.pinned_ami else base_lock.status_of(lock, key, region, aws_now)
        recommended_base = spec.image.pinned_ami or (aws_now.image_id if aws_now else None)
        locked_base = lock_status.locked_image if lock_status else None
        bake_base = spec.image.pinned_ami or locked_base or recommended_base  # what a bake would use
        queue = queues.get(target.name)
        ce = None
        if queue:
            order = sorted(queue.get("computeEnvironmentOrder") or [], key=lambda o: o["order"])
            if order:
                ce = ce_by_arn.get(order[0]["computeEnvironment"]) or ces.get(order[0]["computeEnvironment"].split("/")[-1])
        lt = ((ce or {}).get("computeResources") or {}).get("launchTemplate") or {}
        ami_in_use, lt_version = _ami_of(reads, lt) if lt else (None, None)
        image = reads.image(ami_in_use) if ami_in_use else None
        tags = tag_dict((image or {}).get("Tags"))
        base = tags.get(TAG_BASE_AMI)
        owner = tags.get(TAG_TASK)
        # The spec hash on the AMI is its baker's: for an AMI another task baked (the same
        # image, reused: register.ami.serves) it says nothing of this spec; the image hash does.
        spec_changed = (tags[TAG_SPEC_HASH] != spec.spec_hash) if tags.get(TAG_SPEC_HASH) and owner == target.ami_task else None
        image_changed = None
        if base and tags.get(TAG_IMAGE_HASH):
            image_changed = expected_image_hash(spec, base, image_target, memo=hashes) != tags[TAG_IMAGE_HASH]
        stale: list[str] = []
        notes: list[str] = []
        if not queue:
            stale.append(f"not registered: no job queue {target.name}; run `factory bake {target.ami_task}`")
        elif not ami_in_use:
            stale.append(f"queue {target.name} is in front of no factory launch template; run `factory register {target.ami_task}`")
        elif image is None:
            notes.append(f"AMI {ami_in_use} is not visible to this account")
        elif not tags.get(TAG_TASK):
            notes.append(f"AMI {ami_in_use} is not a factory AMI (no {TAG_TASK} tag): its base and content are unknown")
        held = parameter_held(reads, target.ami_task) if ami_in_use else None
        if held:
            notes.append(f"held at {held} by `factory rollback` until it rolls forward (`factory register {target.ami_task} --ami AMI`, "
                         "or a bake that makes a new image)")
        if owner and owner != target.ami_task:
            notes.append(f"AMI {ami_in_use} was baked for task {owner}: {target.ami_task}'s image is the same (a bake reused it)")
        if base and bake_base and base != bake_base:
            if locked_base:
                stale.append(f"the lock names base {locked_base} ({lock_status.locked_name}); {ami_in_use} was baked on {base}: "
                             f"run `factory bake {target.ami_task}`")
            else:
                stale.append(f"AWS recommends base {recommended_base}; {ami_in_use} was baked on {base}: run `factory bake {target.ami_task}`")
        if lock_status is not None and lock_status.state in ("newer", "backwards", "changed", "missing"):
            notes.append(lock_status.text())
        if (key.name, region) in unusable:
            notes.append(f"a bake would fail: {unusable[(key.name, region)]}")
        if image_changed:
            stale.append(
                f"image content changed since the bake of {ami_in_use} (the spec's image settings, the template or the roles): "
                f"run `factory bake {target.ami_task}`"
            )
        if spec_changed and image_changed is False:
            notes.append("the spec changed since the bake but its image did not; `factory register` applies the rest (e.g. the volume)")
        if queue and (queue.get("state"), queue.get("status")) != ("ENABLED", "VALID"):
            notes.append(f"queue {target.name} is {queue.get('state')}/{queue.get('status')}")
        for row in rows:
            row.ami_in_use, row.base_ami, row.recommended_base = ami_in_use, base, recommended_base
            row.locked_base, row.lock_state = locked_base, lock_status.state if lock_status else None
            row.spec_changed, row.image_changed = spec_changed, image_changed
            row.launch_template = lt.get("launchTemplateName") or lt.get("launchTemplateId")
            row.launch_template_version = lt_version
            row.compute_environment = (ce or {}).get("computeEnvironmentName")
            row.queue_state = f"{queue.get('state')}/{queue.get('status')}" if queue else None
            row.stale = list(stale)
            row.notes = list(notes)
            if row.task != target.ami_task:
                row.notes.append(f"runs on the AMI of {target.ami_task}, the largest task of tier {target.tier}")
            row.grow_fired = fired.get(row.task, [])
            if row.grow_fired:
                row.notes.append(
                    f"the grow agent added space on {len(row.grow_fired)} instance(s) ({', '.join(row.grow_fired[:3])}"
                    f"{', ...' if len(row.grow_fired) > 3 else ''}): the sizing is short for this task; measure more runs (`factory measure`)"
                )
            for b in strays.get(row.task, []):
                row.notes.append(
                    f"builder {b.instance_id} ({b.state}, launched {b.hours_since_launch(now):.1f} h ago) was left by a killed bake "
                    f"of {row.task} and is still paid for: `factory prune --apply` removes it"
                )
            if ami_in_use and row.parameter != ami_in_use:
                row.notes.append(f"/factory/{row.task}/ami-id names {row.parameter or 'nothing'}, not {ami_in_use}: run `factory register {row.task}`")
        out.extend(rows)
    return out, _draining(region, ces.values(), queues.values(), in_use or set())


def _draining(region: str, ces: Any, queues: Any, in_use: set[str]) -> list[str]:
    """What register or prune left disabled because jobs may still run on it
    (factory.register.live_jobs): environments marked retired, queues of tiers no spec uses."""
    from factory.register.live_jobs import TAG_RETIRED

    out = []
    for q in queues:
        tags = q.get("tags") or {}
        if tags.get(TAG_MANAGED) == "true" and tags.get(TAG_TIER) not in in_use and q.get("state") == "DISABLED" \
                and q.get("status") not in ("DELETING", "DELETED"):
            out.append(f"{region}: job queue {q['jobQueueName']} (tier {tags.get(TAG_TIER)}, used by no spec) is disabled and draining: "
                       "`factory prune --apply` deletes it once its jobs have ended")
    for c in ces:
        tags = c.get("tags") or {}
        if tags.get(TAG_MANAGED) == "true" and tags.get(TAG_RETIRED) and c.get("status") not in ("DELETING", "DELETED"):
            out.append(f"{region}: compute environment {c['computeEnvironmentName']} (tier {tags.get(TAG_TIER)}, retired {tags[TAG_RETIRED]}) is "
                       f"{c.get('state', '?')} and draining: the next `factory register` (or prune) deletes it once the jobs that may run on it have ended")
    return sorted(out)


def _stray_builders(ec2: Any, hours: float, now: datetime) -> dict[str, list[Any]]:
    """task -> the builders a killed bake left (factory.packer_leftovers.stray_builders:
    older than prune.builder_hours)."""
    from factory.packer_leftovers import stray_builders

    out: dict[str, list[Any]] = {}
    for b in stray_builders(ec2, timedelta(hours=hours), now):
        out.setdefault(b.task, []).append(b)
    return out


def _grow_fired(ec2: Any) -> dict[str, list[str]]:
    """task -> instances the grow agent marked `factory:grow-fired` (storage.grow), where AWS
    keeps it: on the instance's tags (terminated instances stay visible for about an hour)."""
    from factory.grow import FIRED_TAG, TASK_TAG
    from factory.register.reads import paged

    out: dict[str, list[str]] = {}
    with aws_errors("looking for instances whose grow agent fired"):
        for reservation in paged(ec2, "describe_instances", "Reservations", Filters=[{"Name": "tag-key", "Values": [FIRED_TAG]}]):
            for instance in reservation.get("Instances", []):
                task = tag_dict(instance.get("Tags")).get(TASK_TAG)
                if task:
                    out.setdefault(task, []).append(instance["InstanceId"])
    return out


def _recommended_bases(values: dict[str, str | None], region: str) -> dict[str, Any]:
    """ECS-optimized `.../recommended` parameter -> what it recommends now (base_lock.Resolved: image id and name; from the batch read)."""
    from factory.base_lock import parse_value

    return {name: parse_value(name, value, None, None, region) for name, value in values.items() if value and not name.startswith("/factory/")}


def _ami_of(reads: Any, lt: dict[str, Any]) -> tuple[str | None, int | None]:
    """(AMI, version number) of the launch template version a compute environment pins:
    the default and latest of every template come from one read (RegionReads.version)."""
    template = next((t for t in reads.launch_templates().values()
                     if t["LaunchTemplateId"] == lt.get("launchTemplateId") or t["LaunchTemplateName"] == lt.get("launchTemplateName")), None)
    if template is None:
        return None, None
    pinned = str(lt.get("version") or "$Default")
    number = {"$Default": template["DefaultVersionNumber"], "$Latest": template["LatestVersionNumber"]}.get(pinned, pinned)
    version = reads.version(template["LaunchTemplateId"], int(number))
    if not version:
        return None, None
    return version["LaunchTemplateData"].get("ImageId"), int(version["VersionNumber"])
