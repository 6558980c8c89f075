"""`bake --all`: every spec prepared with one read of AWS per region, each distinct image
baked once (the other tasks with that image share it), independent bakes in parallel,
then one registration for all (`bake_all`). A failure shared by every task is kept apart
(`REGISTER_FAILED`, the result's `shared_error`), so the summary says it once."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

from factory.bake.build import Prepared, build_prepared, prepare
from factory.bake.images import _serve
from factory.bake.registration import register_results
from factory.bake.result import BakeResult, StepCallback, _join
from factory.cloud import Cloud
from factory.errors import FactoryError


def bake_all(
    specs: Sequence[Any],
    cloud: Cloud | None = None,
    *,
    force: bool = False,
    jobs: int = 2,
    build_root: Path = Path("build"),
    register: bool = True,
    on_step: StepCallback | None = None,
    timeout: float | None = None,
    lock: Any = None,
    refresh: bool = False,
) -> list[BakeResult]:
    """Bake every spec: each distinct image once, independent bakes in parallel.

    One failure does not stop the others; a failed task's result has status "failed"
    and `error`. Ctrl-C interrupts every running Packer and waits for their cleanup.
    `lock` (factory.base_lock.BaseLock) names the bases: those it lacks are added (all
    resolved again with `refresh`), the caller saves it; None: a lock in memory.
    """
    from factory import base_lock, packer
    from factory.bake.build import lock_bases
    from factory.register.region_reads import RegionReads

    cloud = cloud or Cloud("aws")
    lock = lock if lock is not None else base_lock.BaseLock(base_lock.default_path(cloud))
    results: dict[str, BakeResult] = {}
    prepared: dict[str, Prepared] = {}
    # What is read of AWS is read once per region for all specs (the base AMI parameters,
    # the builder's instance type, factory's AMIs), and the build target made once: an
    # unchanged `bake --all` costs a few calls per region, not a round per spec.
    reads: dict[str, RegionReads] = {}
    targets: dict[str, Any] = {}
    hashes: dict[str, str] = {}
    for region in dict.fromkeys(s.region for s in specs):
        reads[region] = RegionReads(cloud.clients(region))
    # The bases from the lock (what it lacks resolved, one GetParameters per region), each
    # locked image checked (one DescribeImages per region): a base that cannot be baked on
    # fails its tasks only.
    unusable = lock_bases(list(specs), cloud, lock, refresh)
    from factory import render as render_mod

    sources = render_mod.content_files()  # the template and role files: listed once for every spec
    for spec in specs:
        try:
            if spec.name in unusable:
                raise FactoryError(unusable[spec.name])
            if spec.region not in targets:
                targets[spec.region] = cloud.target(spec.region)
            prepared[spec.name] = prepare(spec, cloud, build_root, on_step, target=targets[spec.region], reads=reads[spec.region],
                                          hashes=hashes, lock=lock, sources=sources)
        except FactoryError as exc:
            results[spec.name] = _failed(spec, exc.message)

    # Each distinct image once: the first task with a hash bakes, the rest share.
    groups: dict[tuple[str, str], list[Prepared]] = {}
    for p in prepared.values():
        groups.setdefault((p.spec.region, p.image_hash), []).append(p)

    # boto3 sessions are not thread-safe when making clients: make them here, once.
    for region, _ in groups:
        cloud.clients(region).ec2()
        if not force:
            reads[region].images()  # read before the bakes run in parallel: once, not per thread
    jobs = max(1, min(jobs, len(groups)))
    cloud.builders(jobs)  # on the local cloud, a build host per job

    def one(group: list[Prepared]) -> None:
        leader = group[0]
        try:
            r = build_prepared(leader, cloud, force=force, on_step=on_step, timeout=timeout, reads=reads[leader.spec.region])
        except FactoryError as exc:
            for p in group:
                results[p.spec.name] = _failed(p.spec, exc.message, p)
            return
        results[leader.spec.name] = r
        full = None
        if len(group) > 1 and r.ami_id:
            image = reads[leader.spec.region].image(r.ami_id)
            full = _serve(cloud.clients(leader.spec.region).ec2(), image, [p.spec.name for p in group]) if image else None
        for p in group[1:]:
            results[p.spec.name] = BakeResult(
                task=p.spec.name, ami_id=r.ami_id, region=p.spec.region, base_ami=p.base_ami,
                spec_hash=p.spec.spec_hash, image_hash=p.image_hash, baked=False,
                volume_gib=p.plan.volume_gib,
                # An AMI that existed before this run is reused; one baked now is shared.
                status="reused" if r.status == "reused" else "shared",
                reused_from=r.reused_from or leader.spec.name,
                build_dir=str(Path(p.out_dir).absolute()), steps=dict(p.steps),
                note=_join(f"same image as {leader.spec.name}: shares {r.ami_id}", full or "").rstrip("; "),
                image_manifest=r.image_manifest,
            )

    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="bake") as pool:
        futures = [pool.submit(one, g) for g in groups.values()]
        try:
            # Waited for in slices, so that Ctrl-C reaches this thread; no slice is slept out
            # once every bake is done (an unchanged bake --all ends at once).
            pending = set(futures)
            while pending:
                _, pending = wait(pending, timeout=0.1)
            for f in futures:
                f.result()
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            packer.cancel_all()
            pool.shutdown(wait=True)
            raise

    ordered = [results[s.name] for s in specs]
    from factory.bake.distributing import distribute_results

    distribute_results(ordered, specs, cloud, on_step=on_step)
    if register:
        ok_specs = [s for s in specs if results[s.name].status != "failed"]
        try:
            register_results([results[s.name] for s in ok_specs], ok_specs, cloud, on_step=on_step, all_specs=ok_specs)
        except FactoryError as exc:
            for s in ok_specs:
                r = results[s.name]
                r.error = REGISTER_FAILED
                r.shared_error = exc.message
                r.status = "failed"
    for r in ordered:  # what each task's own steps took (bake_task times the whole call instead)
        r.seconds = r.seconds or sum(r.steps.values())
    return ordered


REGISTER_FAILED = "registering failed, for a reason every task shares (said once: shared_errors)"


def _failed(spec: Any, message: str, p: Prepared | None = None) -> BakeResult:
    return BakeResult(
        task=spec.name, ami_id=None, region=spec.region, base_ami=p.base_ami if p else None,
        spec_hash=spec.spec_hash, image_hash=p.image_hash if p else None, baked=False,
        volume_gib=p.plan.volume_gib if p else None, status="failed", error=message,
        build_dir=str(Path(p.out_dir).absolute()) if p else None,
    )
