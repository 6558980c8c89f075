"""Plan or apply the launch template, compute environment and queue of each tier.

Desired state per tier -> plan (create / update / replace / unchanged, with the reason,
per resource) -> apply. Everything is found by name and tags in AWS, never from local
state, so a run that failed half way is finished by the next one. docs/register.md has
the details.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from factory.aws import Clients
from factory.config import FactoryConfig
from factory.errors import FactoryError, UsageError
from factory.register import ami, compute_environment, job_queue, launch_template, parameter
from factory.register.network import resolve_network, resolve_role
from factory.register.region_reads import RegionReads
from factory.register.results import RegisterResult, TierResult
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
) -> RegisterResult:
    """Plan (dry_run) or apply the launch template, compute environment and queue of each tier.

    `image_target` is the cloud's render.BuildTarget (Cloud.image_target), against which an
    AMI's image hash is checked (default: AWS's). `hold` is the parameter description a
    rollback writes (parameter.hold_description). A tier whose largest task a rollback holds
    stays on that AMI unless one is given for it, and a given one of a task in
    `yield_to_hold` (an AMI a bake reused, not made) does not end the hold either."""
    config = config or FactoryConfig()
    run = Run(config, dry_run, Waiter(wait_timeout, poll), progress or (lambda _msg: None))
    overrides = dict(ami_overrides or {})
    regions: dict[str, compute_environment.Region] = {}
    regional = {clients.region: clients}
    reads: dict[str, RegionReads] = {}
    results: list[TierResult] = []
    for target in targets:
        # Tiers in another region get their own clients, at the caller's endpoint.
        cl = regional.setdefault(target.region, Clients(region=target.region, endpoint_url=clients.endpoint_url))
        if target.region not in regions:
            # Each read once per region for every tier (not a round per tier): the parameters
            # of every task of the region's tiers in one batch, the rest on first use.
            reads[target.region] = RegionReads(cl)
            reads[target.region].parameters(parameter.parameter_name(t) for x in targets if x.region == target.region for t in x.tasks)
            regions[target.region] = compute_environment.Region(
                clients=cl,
                network=resolve_network(cl, target.region, config),
                instance_role=resolve_role(cl, config.batch.instance_role, "instance profile", "batch.instance_role") or "",
                service_role=resolve_role(cl, config.batch.service_role, "role", "batch.service_role"),
                spot_fleet_role=resolve_role(cl, config.batch.spot_fleet_role, "role", "batch.spot_fleet_role"),
                compute_environments=reads[target.region].compute_environments(),
            )
        region = regions[target.region]
        ec2, batch = cl.ec2(), cl.batch()
        here = reads[target.region]
        if hold is None:
            given, keep, hold_notes = _hold(here, target, overrides.get(target.ami_task), yield_to_hold)
        else:  # a rollback: it sets the hold
            given, keep, hold_notes = overrides.get(target.ami_task), False, []
        ami_id, ami_source, notes = ami.resolve(cl, target, {**overrides, target.ami_task: given} if given else overrides, image_target, reads=here)
        if keep:
            ami_source = f"held by `factory rollback` ({parameter.parameter_name(target.ami_task)})"
        notes = hold_notes + notes
        changes: list = []
        data = launch_template.launch_template_data(target, ami_id, config.boot_commands)
        lt = launch_template.reconcile(run, ec2, target, data, changes, reads=here)
        queue = job_queue.find(batch, target.name, here.queues())
        ce_name, ce_arn, olds = compute_environment.reconcile(run, batch, target, region, lt, queue, changes)
        job_queue.reconcile(run, batch, target, queue, ce_name, ce_arn, changes)
        compute_environment.retire(run, batch, olds, f"replaced; no longer behind {target.name}", changes, queues=(target.name,))
        description = hold or (here.descriptions().get(parameter.parameter_name(target.ami_task)) if keep else None)
        parameter.reconcile(run, cl.ssm(), target, ami_id, changes, reads=here, description=description)  # last: it names what the tier now runs
        results.append(
            TierResult(
                tier=target.tier,
                tasks=target.tasks,
                region=target.region,
                ami_id=ami_id,
                ami_source=ami_source,
                volume_gib=target.volume_gib,
                launch_template=lt,
                compute_environment=ce_name,
                job_queue=target.name,
                network=region.network,
                changes=changes,
                notes=notes,
            )
        )
    return RegisterResult(results, dry_run, config.source)


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
    from factory.tiers import tiers_for

    if all_specs is None:
        all_specs = _sibling_specs(specs)
    tiers, _ = tiers_for(all_specs, config.max_tiers)
    pool = {s.name: s for s in all_specs}
    pool.update({s.name: s for s in specs})
    wanted = {s.name for s in specs}
    chosen = [t for t in tiers if wanted & set(t.tasks)]
    uncovered = wanted - {n for t in chosen for n in t.tasks}
    if uncovered:
        raise FactoryError(f"task(s) {', '.join(sorted(uncovered))} are in no tier; run `factory size --all` to see the tiers")
    members = [pool[n] for t in chosen for n in t.tasks if n in pool]
    targets = targets_for(members, chosen)
    return register_targets(
        targets, clients, ami_overrides, dry_run, config=config, wait_timeout=wait_timeout, poll=poll, progress=progress,
        image_target=image_target, yield_to_hold=yield_to_hold,
    )


def _sibling_specs(specs: Sequence[Any]) -> list[Any]:
    from factory.spec import load_specs

    folders = sorted({s.path.parent for s in specs})
    found = {s.name: s for s in load_specs(folders)}
    found.update({s.name: s for s in specs})
    return list(found.values())
