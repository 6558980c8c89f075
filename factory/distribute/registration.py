"""Register the copies: in every region a task was copied to, the tier's launch template,
compute environment, queue and SSM parameter, as its own region is registered
(factory.register.register_tasks, given the copy as the task's AMI).

Each task is registered there as itself with its region changed, so tiers in a target
region are chosen over the tasks distributed there. factory.yaml's `batch.subnets` and
`security_groups` belong to the spec's own region: a target region uses its default VPC
(said in the notes) until factory.yaml can name a network per region."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, Callable


def register_copies(
    specs: Sequence[Any],
    copies: Mapping[str, Mapping[str, str]],
    clients_for: Callable[[str], Any],
    config: Any,
    *,
    image_target_for: Callable[[str], Any] | None = None,
    progress: Callable[[str], None] | None = None,
    poll: float = 5.0,
) -> dict[str, Any]:
    """copies: task -> {region: AMI there} (the spec's own region left out). Returns
    region -> RegisterResult."""
    from factory.register import register_tasks

    by_region: dict[str, dict[str, str]] = {}
    for spec in specs:
        for region, ami in copies.get(spec.name, {}).items():
            if region != spec.region:
                by_region.setdefault(region, {})[spec.name] = ami
    results: dict[str, Any] = {}
    pool = {s.name: s for s in specs}
    for region, amis in sorted(by_region.items()):
        moved = [replace(pool[name], region=region) for name in amis]
        here = config
        if config.batch.subnets:
            here = replace(config, batch=replace(config.batch, subnets=(), security_groups=()))
        if progress:
            progress(f"registering in {region}")
        result = register_tasks(moved, clients_for(region), dict(amis), False, config=here, all_specs=moved, poll=poll,
                                progress=progress, image_target=image_target_for(region) if image_target_for else None)
        if here is not config:
            result.notes.append(f"{region}: factory.yaml's batch.subnets and security_groups are the spec's own region's; "
                                "the default VPC was used here")
        results[region] = result
    return results
