"""A bake's last step: register the AMIs it baked or reused (`register_results`, through
factory.register, one call per region) and copy each task's launch template, compute
environment and queue into its result."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from factory.bake.result import BakeResult, StepCallback, _join
from factory.cloud import Cloud
from factory.errors import FactoryError


def register_results(
    results: Sequence[BakeResult],
    specs: Sequence[Any],
    cloud: Cloud,
    on_step: StepCallback | None = None,
    all_specs: Sequence[Any] | None = None,
) -> None:
    """Register the baked/reused AMIs (launch template, compute environment, queue).

    Fills launch_template, compute_environment and job_queue in each result. `all_specs`
    are the specs tiers are chosen over (default: every spec beside the given ones).
    """
    from factory.register import register_tasks

    ok = [(r, s) for r, s in zip(results, specs) if r.ami_id and r.status != "failed"]
    by_region: dict[str, list[tuple[BakeResult, Any]]] = {}
    for r, s in ok:
        by_region.setdefault(s.region, []).append((r, s))
    for region, pairs in by_region.items():
        first = pairs[0][0].task
        progress = (lambda text, first=first: on_step(first, text)) if on_step else None
        if progress:
            progress("registering")
        t = time.monotonic()
        kwargs: dict[str, Any] = {"progress": progress, "config": cloud.register_config(), "image_target": cloud.image_target(region)}
        if all_specs is not None:
            kwargs["all_specs"] = list(all_specs)
        try:
            # An AMI the bake only found (reused) does not end a rollback's hold; one it made does.
            kwargs["yield_to_hold"] = {s.name for r, s in pairs if r.status == "reused"}
            reg = register_tasks(
                [s for _, s in pairs], cloud.clients(region), {s.name: r.ami_id for r, s in pairs}, False, **kwargs
            )
        except FactoryError as exc:
            amis = ", ".join(f"{r.task} {r.ami_id}" for r, _ in pairs)
            raise FactoryError(f"the AMI is ready ({amis}) but registering it failed: {exc.message}") from None
        seconds = time.monotonic() - t
        for r, _spec in pairs:
            r.steps["register"] = seconds
            _fill_registration(r, reg)
    _register_copies(ok, cloud, on_step)


def _register_copies(ok: Sequence[tuple[BakeResult, Any]], cloud: Cloud, on_step: StepCallback | None) -> None:
    """The copies a distribution made in other regions of this account, registered there too."""
    from factory.distribute.registration import register_copies

    copies = {r.task: {c["region"]: c["ami_id"] for c in r.copies or []
                       if not c.get("account") and c.get("status") != "source" and not c.get("error") and c.get("ami_id")}
              for r, _ in ok}
    if not any(copies.values()):
        return
    first = ok[0][0].task
    progress = (lambda text: on_step(first, text)) if on_step else None
    try:
        done = register_copies([s for _, s in ok], copies, cloud.clients, cloud.register_config(), image_target_for=cloud.image_target,
                               progress=progress)
    except FactoryError as exc:
        raise FactoryError(f"the AMI and its copies are ready, but registering the copies failed: {exc.message}") from None
    for r, _ in ok:
        for region, reg in done.items():
            if r.task in {t for tier in reg.tiers for t in tier.tasks}:
                r.note = _join(r.note, f"registered in {region}: queue {reg.for_task(r.task).job_queue}")


def _fill_registration(result: BakeResult, reg: Any) -> None:
    """Copy the task's launch template, compute environment and queue from a RegisterResult."""
    tier = reg.for_task(result.task)
    entry = tier.task_json()
    for note in tier.notes:  # a rollback's hold kept or ended: the bake says so
        if "`factory rollback`" in note:
            result.note = _join(result.note, note)
    result.launch_template = entry.get("launch_template")
    result.compute_environment = entry.get("compute_environment")
    result.job_queue = entry.get("job_queue")
    result.registered = True
