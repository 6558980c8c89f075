"""Plan or apply the launch template, compute environment and queue of each tier.

Desired state per tier -> plan (create / update / replace / unchanged, with the reason,
per resource) -> apply. Everything is found by name and tags in AWS, never from local
state, so a run that failed half way is finished by the next one. docs/register.md has
the details.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from factory.aws import Clients
from factory.config import FactoryConfig
from factory.errors import FactoryError, UsageError
from factory.register import ami, compute_environment, fanout, job_queue, launch_template, parameter, tier_choice
from factory.register.network import resolve_network, resolve_role
from factory.register.region_reads import RegionReads
from factory.register.results import Change, RegisterResult, TierResult
from factory.register.run import Run
from factory.register.targets import TierTarget, targets_for
from factory.register.waits import Waiter


def register_targets(
    targets: Sequence[TierTarget],
    clients: Clients,
    ami_overrides: Mapping[str, str] | None = None,
    dry_run: bool = False,
    *,
    config: FactoryConfig | None = None,
    wait_timeout: float = 900.0,
    poll: float = 5.0,
    progress: Callable[[str], None] | None = None,
    image_target: Any = None,
    hold: str | None = None,
    yield_to_hold: Collection[str] = (),
    reads: Mapping[str, RegionReads] | None = None,
) -> RegisterResult:
    """Plan (dry_run) or apply the launch template, compute environment and queue of each tier.

    `image_target` is the cloud's render.BuildTarget (Cloud.image_target), against which an
    AMI's image hash is checked (default: AWS's). `hold` is the parameter description a
    rollback writes (parameter.hold_description). `reads` are regions already read (by
    register_tasks, for their capacity). A tier whose largest task a rollback holds
    stays on that AMI unless one is given for it, and a given one of a task in
    `yield_to_hold` (an AMI a bake reused, not made) does not end the hold either."""
    config = config or FactoryConfig()
    run = Run(config, dry_run, Waiter(wait_timeout, poll), progress or (lambda _msg: None))
    overrides = dict(ami_overrides or {})
    regions: dict[str, compute_environment.Region] = {}
    reads = dict(reads or {})
    regional = {clients.region: clients, **{r: x.clients for r, x in reads.items()}}
    tiers: list[_Tier] = []
    for target in targets:  # reads and decisions, tier by tier: no call here waits for AWS
        # Tiers in another region get their own clients, at the caller's endpoint.
        cl = regional.setdefault(target.region, Clients(region=target.region, endpoint_url=clients.endpoint_url))
        if target.region not in regions:
            # Each read once per region for every tier (not a round per tier): the parameters
            # of every task of the region's tiers in one batch, the rest now, before the tiers
            # are handled side by side.
            reads.setdefault(target.region, RegionReads(cl))
            reads[target.region].parameters(parameter.parameter_name(t) for x in targets if x.region == target.region for t in x.tasks)
            reads[target.region].prime()
            for service in ("ec2", "batch", "ssm"):
                cl.client(service)  # made here, once: threads share clients, never make them
            regions[target.region] = compute_environment.Region(
                clients=cl,
                network=resolve_network(cl, target.region, config),
                instance_role=resolve_role(cl, config.batch.instance_role, "instance profile", "batch.instance_role") or "",
                service_role=resolve_role(cl, config.batch.service_role, "role", "batch.service_role"),
                spot_fleet_role=resolve_role(cl, config.batch.spot_fleet_role, "role", "batch.spot_fleet_role"),
                compute_environments=reads[target.region].compute_environments(),
            )
        here = reads[target.region]
        if hold is None:
            given, keep, hold_notes = _hold(here, target, overrides.get(target.ami_task), yield_to_hold)
        else:  # a rollback: it sets the hold
            given, keep, hold_notes = overrides.get(target.ami_task), False, []
        ami_id, ami_source, notes = ami.resolve(cl, target, {**overrides, target.ami_task: given} if given else overrides, image_target, reads=here)
        if keep:
            ami_source = f"held by `factory rollback` ({parameter.parameter_name(target.ami_task)})"
        tiers.append(_Tier(target, cl, regions[target.region], here, ami_id, ami_source, hold_notes + notes, keep))

    # Each step for every tier side by side (fanout), each wait one loop for all tiers:
    # launch templates; environments, waited for together; queues, waited for together;
    # then what replacements left behind, and the parameters last (they name what a tier runs).
    def templates(t: _Tier) -> None:
        data = launch_template.launch_template_data(t.target, t.ami_id, config.boot_commands)
        t.lt = launch_template.reconcile(run, t.clients.ec2(), t.target, data, t.changes, reads=t.reads)

    def environments(t: _Tier) -> None:
        queue = job_queue.find(t.clients.batch(), t.target.name, t.reads.queues())
        t.queue = queue
        t.ce = compute_environment.reconcile(run, t.clients.batch(), t.target, t.region, t.lt, queue, t.changes, ami_id=t.ami_id)

    def queues(t: _Tier) -> None:
        assert t.ce is not None
        t.queue_pending = job_queue.reconcile(run, t.clients.batch(), t.target, t.queue, t.ce.name, t.ce.arn, t.changes, ce_busy=t.ce.busy)

    def leftovers(t: _Tier) -> None:
        assert t.ce is not None
        compute_environment.retire(run, t.clients.batch(), t.ce.olds, f"replaced; no longer behind {t.target.name}", t.changes, queues=(t.target.name,))

    def parameters(t: _Tier) -> None:
        assert t.ce is not None
        if t.ce.deferred:  # the environment still runs the old launch template version
            for task in t.target.tasks:
                t.changes.append(Change("ssm-parameter", parameter.parameter_name(task), "deferred", f"not pointed at {t.ami_id}: compute environment {t.ce.name} has not taken it yet"))
            return
        description = hold or (t.reads.descriptions().get(parameter.parameter_name(t.target.ami_task)) if t.keep else None)
        parameter.reconcile(run, t.clients.ssm(), t.target, t.ami_id, t.changes, reads=t.reads, description=description)

    fanout.each(tiers, templates)
    fanout.each(tiers, environments)
    _wait_per_region(tiers, lambda batch, ts: compute_environment.wait_all(run, batch, [t.ce.pending for t in ts if t.ce and t.ce.pending]))
    for t in tiers:
        if t.ce is not None and t.ce.pending is not None and t.ce.pending.rolling:
            t.notes.append(f"compute environment {t.ce.name}: {compute_environment.rolling_text(t.ce.pending.policy or {})}; "
                           "it shows UPDATING until they are gone, and its new instances come from the new launch template version")
    fanout.each(tiers, queues)
    _wait_per_region(tiers, lambda batch, ts: job_queue.wait_all(run, batch, [t.queue_pending for t in ts if t.queue_pending]))
    fanout.each(tiers, leftovers)
    fanout.each(tiers, parameters)
    results = [
        TierResult(
            tier=t.target.tier,
            tasks=t.target.tasks,
            region=t.target.region,
            ami_id=t.ami_id,
            ami_source=t.ami_source,
            volume_gib=t.target.volume_gib,
            launch_template=t.lt,
            compute_environment=t.ce.name if t.ce else "",
            job_queue=t.target.name,
            network=t.region.network,
            changes=t.changes,
            notes=t.notes,
        )
        for t in tiers
    ]
    return RegisterResult(results, dry_run, config.source)


@dataclass
class _Tier:
    """One tier as a run carries it from step to step."""

    target: TierTarget
    clients: Clients
    region: compute_environment.Region
    reads: RegionReads
    ami_id: str
    ami_source: str
    notes: list[str]
    keep: bool  # a rollback's hold keeps the tier's AMI
    changes: list[Change] = field(default_factory=list)
    lt: dict[str, Any] = field(default_factory=dict)
    queue: dict[str, Any] | None = None
    ce: compute_environment.Outcome | None = None
    queue_pending: job_queue.Pending | None = None


def _wait_per_region(tiers: Sequence[_Tier], wait: Callable[[Any, list[_Tier]], None]) -> None:
    """`wait(batch client, the region's tiers)` once per region."""
    by_region: dict[str, list[_Tier]] = {}
    for t in tiers:
        by_region.setdefault(t.target.region, []).append(t)
    for ts in by_region.values():
        wait(ts[0].clients.batch(), ts)


def _hold(reads: RegionReads, target: TierTarget, given: str | None, yield_to_hold: Collection[str]) -> tuple[str | None, bool, list[str]]:
    """(the AMI to use for the tier's largest task or None for its newest, whether a
    rollback's hold keeps it, notes for the plan)."""
    task = target.ami_task
    held = parameter.held(reads, task)
    if not held:
        return given, False, []
    if given and given != held and task not in yield_to_hold:
        return given, False, [f"rolls {task} forward to {given} from {held}, where `factory rollback` held it"]
    image = reads.image(held)
    if image is None or image.get("State") != "available":
        state = image.get("State") if image else "gone"
        return given, False, [f"`factory rollback` held {task} at {held}, which is {state}: the hold ends"]
    newest = given or (reads.newest_image(task=task, architecture=target.architecture) or {}).get("ImageId")
    if newest and newest != held:
        how = f"the bake's AMI is {newest}" if given else f"the newest AMI is {newest}"
        return held, True, [f"{task} stays on {held}, where `factory rollback` put it ({how}): `factory register {task} --ami {newest}` rolls forward"]
    return held, True, []


def register_tasks(
    specs: Sequence[Any],
    clients: Clients,
    ami_overrides: Mapping[str, str] | None = None,
    dry_run: bool = False,
    *,
    config: FactoryConfig | None = None,
    all_specs: Sequence[Any] | None = None,
    wait_timeout: float = 900.0,
    poll: float = 5.0,
    progress: Callable[[str], None] | None = None,
    image_target: Any = None,
    yield_to_hold: Collection[str] = (),
) -> RegisterResult:
    """Register the tiers that hold `specs` (the call `factory bake` ends with).

    Tiers are chosen over `all_specs` (default: every spec in the folders `specs` come
    from), so registering one task gives the same tiers as `register --all`.
    ami_overrides maps task -> AMI id (e.g. the AMI bake just made). `config` defaults to
    ./factory.yaml when present (factory.config.load_config), else every default.
    """
    if config is None:
        from factory.config import load_config

        config = load_config()
    if not specs:
        raise UsageError("no tasks to register: name a TASK or pass --all")
    if all_specs is None:
        all_specs = _sibling_specs(specs)
    # The tiers within the account's room under Batch's fixed quotas, with the names its
    # queues already have (register.tier_choice): read once per region, and the same reads
    # serve the register itself.
    reads: dict[str, RegionReads] = {}
    for region in sorted({s.region or clients.region for s in all_specs}):
        cl = clients if region == clients.region else Clients(region=region, endpoint_url=clients.endpoint_url)
        reads[region] = RegionReads(cl)
    choice = tier_choice.for_register(all_specs, config.max_tiers, reads, clients.region or "")
    tiers = choice.tiers
    if not dry_run:  # first: what register makes next is what the others then choose (prune never retires it)
        for region, value in sorted(choice.record.items()):
            tier_choice.write_record(reads[region].clients.ssm(), value, region)
    pool = {s.name: s for s in all_specs}
    pool.update({s.name: s for s in specs})
    wanted = {s.name for s in specs}
    chosen = [t for t in tiers if wanted & set(t.tasks)]
    uncovered = wanted - {n for t in chosen for n in t.tasks}
    if uncovered:
        raise FactoryError(f"task(s) {', '.join(sorted(uncovered))} are in no tier; run `factory size --all` to see the tiers")
    members = [pool[n] for t in chosen for n in t.tasks if n in pool]
    targets = targets_for(members, chosen)
    result = register_targets(
        targets, clients, ami_overrides, dry_run, config=config, wait_timeout=wait_timeout, poll=poll, progress=progress,
        image_target=image_target, yield_to_hold=yield_to_hold, reads=reads,
    )
    result.notes.extend(choice.notes)
    result.notes.extend(
        f"{region}: SSM {tier_choice.ROOM_PARAMETER} {'would be' if dry_run else 'is'} set to {value} (the tiers register chose there)"
        for region, value in sorted(choice.record.items())
    )
    return result


def _sibling_specs(specs: Sequence[Any]) -> list[Any]:
    from factory.spec import load_specs

    folders = sorted({s.path.parent for s in specs})
    found = {s.name: s for s in load_specs(folders)}
    found.update({s.name: s for s in specs})
    return list(found.values())
