"""Plan or apply the launch template, compute environment and queue of each tier.

Desired state per tier -> plan (create / update / replace / unchanged, with the reason,
per resource) -> apply. Everything is found by name and tags in AWS, never from local
state, so a run that failed half way is finished by the next one. docs/register.md has
the details.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
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
) -> RegisterResult:
    """Plan (dry_run) or apply the launch template, compute environment and queue of each tier.

    `image_target` is the cloud's render.BuildTarget (Cloud.image_target), against which an
    AMI's image hash is checked (default: AWS's)."""
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
        ami_id, ami_source, notes = ami.resolve(cl, target, overrides, image_target, reads=here)
        changes: list = []
        data = launch_template.launch_template_data(target, ami_id, config.boot_commands)
        lt = launch_template.reconcile(run, ec2, target, data, changes, reads=here)
        queue = job_queue.find(batch, target.name, here.queues())
        ce_name, ce_arn, olds = compute_environment.reconcile(run, batch, target, region, lt, queue, changes)
        job_queue.reconcile(run, batch, target, queue, ce_name, ce_arn, changes)
        compute_environment.retire(run, batch, olds, f"replaced; no longer behind {target.name}", changes)
        parameter.reconcile(run, cl.ssm(), target, ami_id, changes, reads=here)  # last: it names what the tier now runs
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
        targets, clients, ami_overrides, dry_run, config=config, wait_timeout=wait_timeout, poll=poll, progress=progress, image_target=image_target
    )


def _sibling_specs(specs: Sequence[Any]) -> list[Any]:
    from factory.spec import load_specs

    folders = sorted({s.path.parent for s in specs})
    found = {s.name: s for s in load_specs(folders)}
    found.update({s.name: s for s in specs})
    return list(found.values())
