"""The bake: size, render, reuse-or-build the AMI with Packer, then register it.

Content-addressed: the image's identity (factory.image_identity) is a sha256 over
everything that shapes the image. The hash is tagged on the AMI and its snapshots as `factory:image-hash`, by Packer when
it creates them (the bake adds it to the rendered `tags` variable), so an AMI is never
left without it; should a tag still be missing after the build and adding it fail, the
AMI is deregistered and its snapshots deleted, and the error says so. A bake first
looks for an available AMI of this account with that tag and reuses it (unless
`force`), so an unchanged task never runs Packer, and two tasks whose images are
identical share one AMI. `bake_all()` also bakes each distinct image once.

A bake proves what it baked: the roles end with the container check (bake_check), and
a failing check fails the Packer build before the AMI is created, so no AMI is kept.

After every Packer build, failed or not, what Packer left of it where one of its own AWS
calls failed (a stopped builder, its temporary unencrypted AMI, a snapshot) is removed
(`factory.packer_leftovers`), and the result or the error says so.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from factory.aws import resource_tags
from factory.cloud import Cloud
from factory.errors import FactoryError
from factory.image_identity import IMAGE_HASH_TAG, content_hash

# Files of the last real build kept in build/<task>/ when the folder is re-rendered.

@dataclass
class BakeResult:
    task: str
    ami_id: str | None
    region: str
    base_ami: str | None
    spec_hash: str
    image_hash: str | None
    baked: bool
    volume_gib: int | None
    status: str = "baked"  # baked | reused | shared | failed
    reused_from: str | None = None  # the task whose bake made the reused AMI
    build_dir: str | None = None
    log: str | None = None
    seconds: float = 0.0
    steps: dict[str, float] = field(default_factory=dict)
    launch_template: dict[str, Any] | None = None
    compute_environment: str | None = None
    job_queue: str | None = None
    registered: bool = False
    note: str | None = None
    error: str | None = None
    # A failure shared by every task of the run (registration across all tiers): kept out
    # of `error`, so a summary says it once rather than once per task.
    shared_error: str | None = None
    image_manifest: str | None = None  # the fetched build/<task>/image-manifest.json

    def to_json(self) -> dict[str, Any]:
        data = {
            "task": self.task,
            "ami_id": self.ami_id,
            "region": self.region,
            "base_ami": self.base_ami,
            "spec_hash": self.spec_hash,
            "image_hash": self.image_hash,
            "baked": self.baked,
            "volume_gib": self.volume_gib,
            "status": self.status,
            "reused_from": self.reused_from,
            "build_dir": self.build_dir,
            "log": self.log,
            "seconds": round(self.seconds, 2),
            "steps": {k: round(v, 2) for k, v in self.steps.items()},
            "registered": self.registered,
            "launch_template": self.launch_template,
            "compute_environment": self.compute_environment,
            "job_queue": self.job_queue,
            "image_manifest": self.image_manifest,
        }
        if self.note:
            data["note"] = self.note
        if self.error:
            data["error"] = self.error
        return data


def find_image(ec2: Any, digest: str) -> dict[str, Any] | None:
    """The newest available AMI of this account tagged with `digest`, or None."""
    from factory.aws import aws_errors
    from factory.register.reads import paged

    with aws_errors("looking for an AMI with the same content hash"):
        images = list(paged(
            ec2, "describe_images", "Images",
            Owners=["self"],
            Filters=[{"Name": f"tag:{IMAGE_HASH_TAG}", "Values": [digest]}, {"Name": "state", "Values": ["available"]}],
        ))
    # Filters are the API's promise; check anyway (a tag filter silently ignored would
    # otherwise reuse an unrelated image).
    images = [
        i for i in images
        if i.get("State") == "available" and resource_tags(i).get(IMAGE_HASH_TAG) == digest
    ]
    return max(images, key=lambda i: (i.get("CreationDate", ""), i["ImageId"])) if images else None


def ensure_tagged(ec2: Any, ami_id: str, tags: dict[str, str]) -> str | None:
    """After a build: the AMI should carry `tags` from birth (Packer's `tags` and
    `snapshot_tags`). Add any that are missing; when that fails, deregister the AMI and
    delete its snapshots (an AMI without its content hash would never be reused, only paid
    for) and raise, naming them. Returns a note for the result, or None."""
    from factory.aws import aws_errors
    from factory.errors import AwsError

    try:
        with aws_errors(f"reading the tags of {ami_id}"):
            image = ec2.describe_images(ImageIds=[ami_id])["Images"][0]  # one id, so one answer: no paging (MaxResults) needed
    except (AwsError, IndexError, KeyError) as exc:
        # Packer created it with the tags; not being able to look is no reason to drop it.
        return f"could not confirm the tags of {ami_id} ({getattr(exc, 'message', exc)}); Packer set them at creation"
    snapshots = [b["Ebs"]["SnapshotId"] for b in image.get("BlockDeviceMappings", []) if b.get("Ebs", {}).get("SnapshotId")]
    have = resource_tags(image)
    if all(have.get(k) == v for k, v in tags.items()):
        return None
    try:
        with aws_errors(f"tagging {ami_id}"):
            ec2.create_tags(Resources=[ami_id, *snapshots], Tags=[{"Key": k, "Value": v} for k, v in sorted(tags.items())])
    except AwsError as exc:
        raise FactoryError(f"{exc.message}. {discard_image(ec2, ami_id, snapshots)}") from None
    return f"added missing tags to {ami_id} after the build"


def discard_image(ec2: Any, ami_id: str, snapshots: Sequence[str]) -> str:
    """Deregister an AMI with its snapshots (one call: deleting them after deregistering races
    with `InvalidSnapshot.InUse`); say what was done (or what to do by hand)."""
    from factory.aws import aws_errors
    from factory.errors import AwsError

    by_hand = f"aws ec2 deregister-image --image-id {ami_id} --delete-associated-snapshots"
    try:
        with aws_errors(f"deregistering {ami_id}"):
            answer = ec2.deregister_image(ImageId=ami_id, DeleteAssociatedSnapshots=True)
    except AwsError as exc:
        return f"The untagged AMI could not be removed either ({exc.message}): remove it by hand: {by_hand}"
    kept = [r["SnapshotId"] for r in answer.get("DeleteSnapshotResults") or [] if r.get("ReturnCode") != "success"]
    if kept:
        return f"The untagged AMI {ami_id} was deregistered but AWS kept its snapshots {', '.join(kept)}: delete them by hand"
    what = f"{ami_id}" + (f" and its snapshots {', '.join(snapshots)}" if snapshots else "")
    return f"The untagged AMI was removed: deregistered {what}"


# -- where the bake runs -------------------------------------------------------------


# -- one bake ------------------------------------------------------------------------


StepCallback = Callable[[str, str], None]  # (task, step text)


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
    hashes: dict[str, str] | None = None,
) -> Prepared:
    """Size, resolve the base AMI, render `build_root/<task>/`, hash. `reads` (the region's
    RegionReads, shared by every spec of a `bake --all`) answers the base AMI's parameter
    and the builder's instance type from one read per region instead of one per spec;
    `hashes` is content_hash's memo for the run."""
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

    t = time.monotonic()
    say("resolving the base AMI")
    clients = cloud.clients(spec.region)
    base_ami = _base_ami(spec, clients, reads)
    if spec.image.pinned_ami:
        check_pinned_ami(spec, clients.ec2(), base_ami)
    out_dir = Path(build_root) / spec.name
    say("rendering the Packer folder")
    # Rendering replaces the folder: keep the record of the last real build (its log and
    # manifest) for when this bake turns out to reuse that build's AMI.
    rr = render_mod.render(spec, plan, base_ami, out_dir, target=target, keep=render_mod.BUILD_RECORDS)
    steps["render"] = time.monotonic() - t

    check_builder_memory(clients.ec2(), rr.variables["instance_type"], spec.image.architecture, cloud.config_source(), reads)

    digest = content_hash(base_ami, rr.variables, rr.modern_packer, hashes)
    # The AMI is born with its content hash: Packer tags the AMI and its snapshots with it
    # when it creates them, so there is never an untagged AMI nobody will reuse. `tags` is
    # not hashed (NOT_IMAGE_VARIABLES), and the hash was taken before it was added.
    rr = render_mod.with_tags(rr, {IMAGE_HASH_TAG: digest})
    return Prepared(spec, plan, base_ami, out_dir, rr, digest, steps)


def _base_ami(spec: Any, clients: Any, reads: Any) -> str:
    """The base AMI (render.resolve_base_ami), its parameter read with the others of the region when `reads` is given."""
    from factory import render as render_mod

    name = spec.image.family_info.ssm_parameter(spec.image.architecture)
    if reads is None or spec.image.pinned_ami or not name:
        return render_mod.resolve_base_ami(spec, clients)
    value = reads.parameters([name])[name]
    if value is None:
        return render_mod.resolve_base_ami(spec, clients)  # says what is missing, as a bake of one spec does
    return render_mod.base_ami_from_parameter(name, value)


def check_builder_memory(ec2: Any, instance_type: str, architecture: str, source: str, reads: Any = None) -> None:
    """The builder runs Docker, the ECS agent and a conda-forge solve (documented to be
    OOM-killed on 1 GiB): refuse a type with less than 4 GiB before any instance starts.
    One instance type asked by name: a single page."""
    from botocore.exceptions import ClientError

    from factory.aws import aws_errors, error_code
    from factory.families import BUILDER_INSTANCE_TYPE, BUILDER_MIN_MEMORY_MIB

    field_name = f"builder.instance_types.{architecture}"
    if reads is not None:
        known = reads.instance_type(instance_type)
        types = [known] if known else []
    else:
        with aws_errors(f"looking up the builder instance type {instance_type}"):
            try:
                types = ec2.describe_instance_types(InstanceTypes=[instance_type]).get("InstanceTypes", [])  # one type, so one answer: no paging (MaxResults) needed
            except ClientError as exc:
                if error_code(exc) != "InvalidInstanceType":
                    raise
                types = []
    if not types:
        raise FactoryError(f"{source}: {field_name}: {instance_type} is not an instance type this region offers; "
                           f"pick another (default {BUILDER_INSTANCE_TYPE[architecture]})")
    mib = int(types[0].get("MemoryInfo", {}).get("SizeInMiB", 0))
    if mib < BUILDER_MIN_MEMORY_MIB:
        raise FactoryError(
            f"{source}: {field_name}: {instance_type} has {mib / 1024:g} GiB of memory; the builder runs Docker, "
            f"the ECS agent and a conda-forge solve, which needs at least {BUILDER_MIN_MEMORY_MIB // 1024} GiB "
            f"(conda is OOM-killed on 1 GiB): pick {BUILDER_INSTANCE_TYPE[architecture]} or larger"
        )


SESSION_MANAGER_PLUGIN = "session-manager-plugin"
SESSION_MANAGER_PLUGIN_DOCS = (
    "https://docs.aws.amazon.com/systems-manager/latest/userguide/session-manager-working-with-install-plugin.html"
)


def check_session_manager_plugin(target: Any, source: str, env: dict[str, str] | None = None) -> None:
    """With `ssh_interface: session_manager`, Packer opens its SSH tunnel through AWS's
    session-manager-plugin on this machine: refuse before any instance starts when the
    PATH Packer runs with has none (Packer would only fail after launching the builder)."""
    import shutil

    from factory import packer

    if getattr(target, "ssh_interface", "") != "session_manager":
        return
    if shutil.which(SESSION_MANAGER_PLUGIN, path=packer.run_environment(env).get("PATH", "")):
        return
    raise FactoryError(
        f"{source}: builder.ssh_interface: session_manager needs AWS's {SESSION_MANAGER_PLUGIN} where factory "
        f"runs, and none is on PATH: install it ({SESSION_MANAGER_PLUGIN_DOCS}) or use ssh_interface public_ip "
        "or private_ip"
    )


def check_pinned_ami(spec: Any, ec2: Any, ami: str) -> None:
    """A pinned `image.base` must name an AMI this account can launch in the spec's region:
    say so, naming the spec's field, before Packer makes a key pair and security group."""
    from botocore.exceptions import ClientError

    from factory.aws import aws_errors, error_code

    missing = False
    with aws_errors(f"looking up the pinned base AMI {ami}"):
        try:
            images = ec2.describe_images(ImageIds=[ami]).get("Images", [])  # one id, so one answer: no paging (MaxResults) needed
        except ClientError as exc:
            if error_code(exc) not in ("InvalidAMIID.NotFound", "InvalidAMIID.Malformed", "InvalidAMIID.Unavailable"):
                raise
            images, missing = [], True
    state = images[0].get("State") if images else None
    if missing or not images or state not in (None, "available"):
        why = f"is {state}" if state else "does not exist or is not shared with this account"
        raise FactoryError(
            f"{spec.path}: image.base: {ami} {why} in {spec.region}. Pin an available AMI of that "
            "region (AMI ids differ per region), or use ecs-al2023, ecs-al2 or ecs-al1"
        )


def ansible_playbook_version(env: dict[str, str] | None = None) -> tuple[str, tuple[int, int]]:
    """The `ansible-playbook` Packer's ansible provisioner will run (found on the PATH Packer
    gets, as packer.py builds it) and its ansible-core version: (path, (major, minor))."""
    import re
    import shutil
    import subprocess

    from factory import packer
    from factory.errors import PackerError

    path_var = packer.run_environment(env).get("PATH", "")
    binary = shutil.which("ansible-playbook", path=path_var)
    if not binary:
        raise PackerError("ansible-playbook is not on the PATH Packer runs with: run `make venv` (or "
                          "`pip install ansible-core`) so Packer's ansible provisioner finds it")
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise PackerError(f"cannot run `{binary} --version` ({exc})") from None
    m = re.search(r"\[core (\d+)\.(\d+)", out.stdout) or re.search(r"ansible-playbook (\d+)\.(\d+)", out.stdout)
    if not m:
        raise PackerError(f"`{binary} --version` did not say its ansible-core version: {out.stdout.strip()[:120]!r}")
    return binary, (int(m.group(1)), int(m.group(2)))


def check_ansible_can_manage(family: str, env: dict[str, str] | None = None) -> None:
    """Refuse early (before any EC2 instance starts) when the ansible-playbook Packer runs
    is too new for the family's system Python (families.FAMILIES[...].ansible_core_below)."""
    from factory.families import FAMILIES

    info = FAMILIES[family]
    if info.ansible_core_below is None:
        return
    binary, version = ansible_playbook_version(env)
    if version >= info.ansible_core_below:
        below = ".".join(map(str, info.ansible_core_below))
        raise FactoryError(
            f"{binary} is ansible-core {version[0]}.{version[1]}, which cannot manage ecs-{family}: its "
            f"{info.python_label} ({info.python_interpreter}) is supported only by ansible-core older than {below}. "
            f"Bake it with `pip install 'ansible-core<{below}'` in a virtualenv whose bin/ comes first on PATH, "
            "or move the spec to `image.base: ecs-al2023`"
        )


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
) -> BakeResult:
    """Bake (or reuse) the AMI for one task, then register it when register.py exists.

    `cloud` says where (default: real AWS); `target` replaces its build target (a
    render.BuildTarget); `force` rebakes even when an AMI with the same content hash exists.
    """
    cloud = cloud or Cloud("aws")
    start = time.monotonic()
    prepared = prepare(spec, cloud, build_root, on_step, target=target)
    result = build_prepared(prepared, cloud, force=force, on_step=on_step, timeout=timeout, cancel=cancel)
    if register:
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


def _serve(ec2: Any, image: dict[str, Any], tasks: list[str]) -> str | None:
    """An AMI reused or shared by `tasks` is theirs too: named in its `factory:tasks` list,
    so register, status and rollback find it by any of their names (register.ami.add_tasks)."""
    from factory.register.ami import add_tasks

    return add_tasks(ec2, image, tasks)


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


def _join(a: str | None, b: str) -> str:
    return f"{a}; {b}" if a else b


# -- many bakes ----------------------------------------------------------------------


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
) -> list[BakeResult]:
    """Bake every spec: each distinct image once, independent bakes in parallel.

    One failure does not stop the others; a failed task's result has status "failed"
    and `error`. Ctrl-C interrupts every running Packer and waits for their cleanup.
    """
    from factory import packer
    from factory.register.region_reads import RegionReads

    cloud = cloud or Cloud("aws")
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
        reads[region].parameters(sorted({n for s in specs if s.region == region and not s.image.pinned_ami
                                         for n in [s.image.family_info.ssm_parameter(s.image.architecture)] if n}))
    for spec in specs:
        try:
            if spec.region not in targets:
                targets[spec.region] = cloud.target(spec.region)
            prepared[spec.name] = prepare(spec, cloud, build_root, on_step, target=targets[spec.region], reads=reads[spec.region], hashes=hashes)
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
            for f in futures:
                while not f.done():
                    time.sleep(0.1)
                f.result()
        except KeyboardInterrupt:
            for f in futures:
                f.cancel()
            packer.cancel_all()
            pool.shutdown(wait=True)
            raise

    ordered = [results[s.name] for s in specs]
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


def shared_errors(results: Sequence[BakeResult]) -> list[str]:
    """The failures shared by several tasks, each once, in the order first met."""
    return list(dict.fromkeys(r.shared_error for r in results if r.shared_error))


def summary_json(results: Sequence[BakeResult]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ok": all(r.status != "failed" for r in results),
        "results": [r.to_json() for r in results],
    }
    shared = shared_errors(results)
    if shared:
        data["shared_errors"] = shared
    return data


def write_summary(results: Sequence[BakeResult], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary_json(results), indent=2, sort_keys=True, default=str) + "\n")
    return path
