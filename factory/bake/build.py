"""One task's bake: `prepare` (size, resolve the base AMI, render `build/<task>/`, take the
content hash), then `build_prepared` (reuse an AMI with that hash, else run Packer, sweep
what it left, check the AMI's tags, tag the image manifest's headline values);
`bake_task` does both for one task and registers the result."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from factory.aws import resource_tags
from factory.bake.checks import check_ansible_can_manage, check_builder_memory, check_pinned_ami, check_session_manager_plugin
from factory.bake.images import _serve, ensure_tagged, find_image
from factory.bake.registration import register_results
from factory.bake.result import BakeResult, StepCallback, _join
from factory.cloud import Cloud
from factory.errors import FactoryError
from factory.image_identity import IMAGE_HASH_TAG, content_hash


@dataclass
class Prepared:
    """A task sized and rendered, with its content hash: ready to reuse or build."""

    spec: Any
    plan: Any
    base_ami: str
    out_dir: Path
    render_result: Any
    image_hash: str
    steps: dict[str, float]


def prepare(
    spec: Any, cloud: Cloud, build_root: Path, on_step: StepCallback | None = None, target: Any = None, reads: Any = None,
    hashes: dict[str, str] | None = None, lock: Any = None, sources: list[tuple[str, Path]] | None = None,
) -> Prepared:
    """Size, take the base AMI from the lock, render `build_root/<task>/`, hash. `lock`
    (factory.base_lock.BaseLock) names the base (`lock_bases` first: a bake resolves what
    it lacks); without one the base is resolved now, into a lock kept in memory. `reads`
    (the region's RegionReads, shared by every spec of a `bake --all`) answers the
    builder's instance type from one read per region instead of one per spec; `hashes` is
    content_hash's memo for the run; `sources` render.content_files() listed once for the run."""
    from factory import render as render_mod
    from factory.sizing import size_task

    steps: dict[str, float] = {}
    say = (lambda text: on_step(spec.name, text)) if on_step else (lambda text: None)

    t = time.monotonic()
    say("sizing")
    plan = size_task(spec)
    steps["size"] = time.monotonic() - t

    target = target or cloud.target(spec.region)
    check_session_manager_plugin(target, cloud.config_source())
    # Where the AMI goes after the bake (factory.yaml `distribute:`, the spec's over it):
    # what AWS would refuse then (a public AMI, aws/ebs shared, a region without a key,
    # another partition) is refused now, before any instance starts.
    config = cloud.register_config()
    dist = config.distribution_for(spec)
    if not dist.empty:  # each target region's key: there, customer-managed (when sharing), enabled
        from factory.distribute.keys import key_arns

        key_arns(cloud.clients, {r: dist.key(r) for r in dist.targets(spec.region)}, bool(dist.share_with or dist.copy_to), config.source)
        # and each region the copies are registered in has a network: a named one or a default VPC
        from factory.distribute.networks import check_networks

        check_networks(cloud.clients, spec, dist, config.source)

    t = time.monotonic()
    say("taking the base AMI from the lock")
    clients = cloud.clients(spec.region)
    base_ami = base_ami_for(spec, cloud, lock)
    if spec.image.pinned_ami:
        check_pinned_ami(spec, clients.ec2(), base_ami)
    out_dir = Path(build_root) / spec.name
    say("rendering the Packer folder")
    # Rendering replaces the folder: keep the record of the last real build (its log and
    # manifest) for when this bake turns out to reuse that build's AMI.
    rr = render_mod.render(spec, plan, base_ami, out_dir, target=target, keep=render_mod.BUILD_RECORDS, sources=sources)
    steps["render"] = time.monotonic() - t

    check_builder_memory(clients.ec2(), rr.variables["instance_type"], spec.image.architecture, cloud.config_source(), reads)

    digest = content_hash(base_ami, rr.variables, rr.modern_packer, hashes)
    # The AMI is born with its content hash: Packer tags the AMI and its snapshots with it
    # when it creates them, so there is never an untagged AMI nobody will reuse. `tags` is
    # not hashed (NOT_IMAGE_VARIABLES), and the hash was taken before it was added.
    rr = render_mod.with_tags(rr, {IMAGE_HASH_TAG: digest})
    return Prepared(spec, plan, base_ami, out_dir, rr, digest, steps)


def base_ami_for(spec: Any, cloud: Cloud, lock: Any) -> str:
    """The spec's pinned AMI, else its base's image in the spec's region from the lock
    (resolved and added now when `lock` lacks it: lock_bases does that for a whole run first)."""
    from factory import base_lock

    if spec.image.pinned_ami:
        return spec.image.pinned_ami
    if lock is None:
        lock = base_lock.BaseLock(base_lock.default_path(cloud))
    key, _ = base_lock.base_of(spec)
    found = lock.image_id(key, spec.region)
    if found is None:
        base_lock.ensure([spec], cloud, lock)
        found = lock.image_id(key, spec.region)
    assert found is not None  # ensure resolved it or raised
    return found


def lock_bases(specs: list[Any], cloud: Cloud, lock: Any, refresh: bool = False) -> dict[str, str]:
    """Before a bake: every base of `specs` in `lock` (a missing one resolved and added,
    `refresh`: all resolved again; in the spec's region and its distribution's), then the
    locked images of the specs' own regions checked, one DescribeImages per region. Returns task -> why its locked base cannot be baked on (deprecated, deregistered)."""
    from factory import base_lock

    # Each base in the regions the images are distributed to as well (the same image name
    # everywhere): status there compares with the lock, and `factory lock` keeps them.
    more = base_lock.distribution_regions(specs, cloud.register_config())
    base_lock.ensure(specs, cloud, lock, refresh=refresh, more=more)
    needs: dict[str, set[str]] = {}
    for spec in specs:
        if not spec.image.pinned_ami:
            needs.setdefault(spec.region, set()).add(base_lock.base_of(spec)[0].name)
    problems = base_lock.check_images(lock, needs, cloud)
    return {spec.name: problems[(base_lock.base_of(spec)[0].name, spec.region)] for spec in specs
            if not spec.image.pinned_ami and (base_lock.base_of(spec)[0].name, spec.region) in problems}


def bake_task(
    spec: Any,
    force: bool = False,
    *,
    target: Any = None,
    cloud: Cloud | None = None,
    build_root: Path = Path("build"),
    register: bool = True,
    on_step: StepCallback | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    lock: Any = None,
    refresh: bool = False,
) -> BakeResult:
    """Bake (or reuse) the AMI for one task, then register it (unless `register` is False).

    `cloud` says where (default: real AWS); `target` replaces its build target (a
    render.BuildTarget); `force` rebakes even when an AMI with the same content hash exists.
    `lock` (factory.base_lock.BaseLock) names the base; a base it lacks is added to it
    (`refresh`: resolved again); the caller saves it. None: a lock in memory.
    """
    from factory import base_lock

    cloud = cloud or Cloud("aws")
    start = time.monotonic()
    lock = lock if lock is not None else base_lock.BaseLock(base_lock.default_path(cloud))
    problems = lock_bases([spec], cloud, lock, refresh)
    if spec.name in problems:
        raise FactoryError(problems[spec.name])
    prepared = prepare(spec, cloud, build_root, on_step, target=target, lock=lock)
    result = build_prepared(prepared, cloud, force=force, on_step=on_step, timeout=timeout, cancel=cancel)
    from factory.bake.distributing import distribute_results

    distribute_results([result], [spec], cloud, on_step=on_step)
    if register and result.status != "failed":
        register_results([result], [spec], cloud, on_step=on_step)
    result.seconds = time.monotonic() - start
    return result


def build_prepared(
    p: Prepared,
    cloud: Cloud,
    *,
    force: bool = False,
    on_step: StepCallback | None = None,
    timeout: float | None = None,
    cancel: threading.Event | None = None,
    reads: Any = None,
) -> BakeResult:
    """Reuse an AMI with the same content hash (unless `force`), else run Packer. `reads`
    (the region's RegionReads) finds the AMI in the region's one read of factory's AMIs."""
    from factory import packer
    from factory import render as render_mod

    spec = p.spec
    say = (lambda text: on_step(spec.name, text)) if on_step else (lambda text: None)
    steps = dict(p.steps)
    clients = cloud.clients(spec.region)
    ec2 = clients.ec2()
    result = BakeResult(
        task=spec.name,
        ami_id=None,
        region=spec.region,
        base_ami=p.base_ami,
        spec_hash=spec.spec_hash,
        image_hash=p.image_hash,
        baked=False,
        volume_gib=p.plan.volume_gib,
        build_dir=str(Path(p.out_dir).absolute()),
        steps=steps,
    )
    if not force:
        t = time.monotonic()
        found = reads.newest_image(image_hash=p.image_hash) if reads is not None else find_image(ec2, p.image_hash)
        steps["lookup"] = time.monotonic() - t
        if found is not None:
            owner = resource_tags(found).get("factory:task")
            result.ami_id = found["ImageId"]
            result.status = "reused"
            result.reused_from = owner
            shared = f", baked for task {owner}" if owner and owner != spec.name else ""
            result.note = f"reused {found['ImageId']}{shared}: same content hash; --force rebakes"
            say(result.note)
            full = _serve(ec2, found, [spec.name])
            if full:
                result.note = _join(result.note, full)
            _manifest_tags(ec2, result, p, found["ImageId"], have=resource_tags(found))
            return result

    t = time.monotonic()
    env = cloud.packer_env(spec.region)
    if cloud.kind == "aws":
        # The local build host's Python is this machine's, whatever the family.
        check_ansible_can_manage(spec.image.family, env)
    say("checking Packer")
    info = packer.find_packer()
    folder = p.out_dir
    packer.init(info, folder, env)
    say("packer validate")
    packer.validate(info, folder, env)
    steps["packer_validate"] = time.monotonic() - t

    t = time.monotonic()
    from factory import packer_leftovers

    before = set(packer_leftovers.builders(ec2, p.image_hash))
    try:
        with cloud.builder(spec.region, p.render_result) as build:
            out = packer.build(
                info,
                folder,
                env=env,
                log_path=p.out_dir / render_mod.PACKER_LOG,
                manifest_path=build.rendered.manifest,
                on_step=say,
                timeout=timeout,
                cancel=cancel,
            )
            build.keep_image(out.ami_id)
    except FactoryError as exc:
        # Packer cleans up after itself, except where its own cleanup call failed:
        # remove what it left (packer_leftovers), and say so with its error.
        try:
            done = packer_leftovers.sweep(ec2, p.image_hash, before)
        except FactoryError as sweep_exc:  # an AwsError, or a builder that would not terminate
            exc.message += f"; cleaning up after it failed too: {sweep_exc.message}"
            raise exc from None
        if done:
            exc.message += "; " + "; ".join(done)
        raise
    try:
        done = packer_leftovers.sweep(ec2, p.image_hash, before, keep_ami=out.ami_id)
    except FactoryError as exc:
        raise FactoryError(f"Packer baked {out.ami_id}, but cleaning up after it failed: {exc.message}") from None
    if done:
        result.note = _join(result.note, "; ".join(done))
    steps["packer_build"] = time.monotonic() - t
    result.log = str(Path(out.log_path).absolute())

    t = time.monotonic()
    say(f"checking the tags of {out.ami_id}")
    note = ensure_tagged(ec2, out.ami_id, p.render_result.variables["tags"])  # with_tags added the hash
    if note:
        result.note = _join(result.note, note)
    _manifest_tags(ec2, result, p, out.ami_id, have=None)
    steps["tag"] = time.monotonic() - t
    result.ami_id = out.ami_id
    result.baked = True
    result.status = "baked"
    say(f"baked {out.ami_id} in {out.seconds:.0f}s")
    return result


def _manifest_tags(ec2: Any, result: BakeResult, p: Prepared, ami_id: str, have: dict[str, str] | None) -> None:
    """Name the image manifest the play fetched (factory.image_manifest) in the result and
    tag the AMI with its headline values: after a build always, on a reuse those missing."""
    from factory import image_manifest

    found = image_manifest.find(Path(p.out_dir).parent, p.spec.name, p.image_hash)
    if found is None:
        if have is None:
            result.note = _join(result.note, f"no image manifest was fetched to {Path(p.out_dir) / image_manifest.FILE_NAME}")
        return
    path, manifest = found
    own = Path(p.out_dir) / image_manifest.FILE_NAME
    if Path(path) != own:
        # A shared AMI (baked for another task): its manifest beside this task's build too,
        # so `factory show` finds the image through its content hash.
        image_manifest.write(own, manifest)
        path = own
    result.image_manifest = str(Path(path).absolute())
    if image_manifest.tag_ami(ec2, ami_id, image_manifest.headline_tags(manifest), have) and have is not None:
        result.note = _join(result.note, f"added the image manifest's headline tags to {ami_id}")
