"""After the AMIs are baked or reused, before they are registered: each task's AMI copied
and shared as its distribution says (factory.distribute), the copies named in its result.
A task whose distribution failed keeps its AMI (the next bake or `factory distribute`
finishes the copies) and fails with the regions that did not get theirs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from factory.bake.result import BakeResult, StepCallback, _join
from factory.cloud import Cloud
from factory.errors import FactoryError


def distribute_results(results: Sequence[BakeResult], specs: Sequence[Any], cloud: Cloud, on_step: StepCallback | None = None) -> None:
    """Distribute every successful result's AMI; fills `result.copies`; a failure marks the
    result failed (its AMI stays, named in the error)."""
    from factory.distribute import distribute_image

    config = cloud.register_config()
    for r, spec in zip(results, specs):
        if not r.ami_id or r.status == "failed":
            continue
        dist = config.distribution_for(spec)
        if dist.empty:
            continue
        say = (lambda text, name=spec.name: on_step(name, text)) if on_step else None
        try:
            done = distribute_image(cloud.clients, spec, r.ami_id, dist, where=config.source, on_step=say,
                                    builder_key=config.builder.kms_key)
        except FactoryError as exc:
            r.status, r.error = "failed", f"the AMI is ready ({r.ami_id}) but distributing it failed: {exc.message}"
            continue
        r.copies = [c.to_json() for c in done.copies]
        if not done.ok:
            r.status = "failed"
            r.error = (f"the AMI is ready ({r.ami_id}) but copying it failed in {', '.join(c.region for c in done.copies if c.error)}: "
                       + "; ".join(done.errors) + f"; run `factory distribute {spec.name}` (or bake again) to finish")
        else:
            r.note = _join(r.note, "copied to " + ", ".join(f"{c.region}{' ' + c.account if c.account else ''} {c.ami_id}"
                                                           for c in done.copies if c.status != "source"))
            if done.accounts:  # copy_to entries with `register: true`: registered in that account
                from factory.distribute.run import register_in_accounts

                try:
                    for account, regions in register_in_accounts(done, spec, config, progress=say).items():
                        r.note = _join(r.note, f"registered in account {account}: {', '.join(sorted(regions))}")
                except FactoryError as exc:
                    r.status, r.error = "failed", f"the AMI and its copies are ready, but registering in another account failed: {exc.message}"
