"""`distribute_image`: one task's AMI to every region of its distribution, in parallel,
shared as its settings say, in each region (factory.distribute's modules do each step).

What a run that died left is finished by the next: copies are found by their tags
(copies.find_copy), a pending one is waited for, a failed one is deregistered with its
snapshots and made again, and sharing adds only what is missing. One region's failure
does not stop the others; the result says which regions have their copy and which failed,
and a failed copy is never left behind."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

from factory.aws import aws_errors, resource_tags
from factory.distribute import copies, keys, sharing
from factory.errors import FactoryError
from factory.image_identity import IMAGE_HASH_TAG


@dataclass
class RegionCopy:
    region: str
    ami_id: str | None
    status: str  # source | copied | found | failed
    account: str = ""
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"region": self.region, "account": self.account, "ami_id": self.ami_id, "status": self.status}
        if self.notes:
            data["notes"] = self.notes
        if self.error:
            data["error"] = self.error
        return data


@dataclass
class DistributionResult:
    task: str
    source_ami: str
    home: str
    copies: list[RegionCopy] = field(default_factory=list)
    accounts: dict[str, Any] | None = None  # copy_to accounts with `register: true` -> their clients_for

    @property
    def ok(self) -> bool:
        return all(c.error is None for c in self.copies)

    @property
    def errors(self) -> list[str]:
        return [f"{c.region}: {c.error}" for c in self.copies if c.error]

    def ami_by_region(self, account: str = "") -> dict[str, str]:
        """region -> the AMI there (in `account`; "": the source's account)."""
        return {c.region: c.ami_id for c in self.copies if c.ami_id and c.error is None and c.account == account}

    def to_json(self) -> dict[str, Any]:
        return {"task": self.task, "source_ami": self.source_ami, "home": self.home, "copies": [c.to_json() for c in self.copies]}


def distribute_image(
    clients_for: Callable[[str], Any],
    spec: Any,
    source_ami: str,
    dist: Any,
    *,
    where: str = "factory.yaml",
    on_step: Callable[[str], None] | None = None,
    timeout: float = copies.COPY_TIMEOUT_SECONDS,
    poll: float = copies.COPY_POLL_SECONDS,
    builder_key: str | None = None,
) -> DistributionResult:
    """Copy `source_ami` (in the spec's region) to every target region of `dist`, in
    parallel, and share it and every copy as `dist` says. `clients_for(region)` gives a
    region's factory.aws.Clients; `where` names the settings file in messages."""
    say = on_step or (lambda text: None)
    home = spec.region
    result = DistributionResult(spec.name, source_ami, home)
    if dist.empty:
        return result
    targets = dist.targets(home)
    copy_accounts = [c.account for c in dist.copy_to]
    wanted = sharing.launch_permissions(dist, copy_accounts)
    # boto3 makes clients unsafely across threads: every region's, here, first.
    for region in (home, *targets):
        clients_for(region).ec2()
        clients_for(region).client("kms")
    arns = keys.key_arns(clients_for, {r: dist.key(r) for r in targets}, bool(dist.share_with or dist.copy_to), where)

    home_ec2 = clients_for(home).ec2()
    with aws_errors(f"reading {source_ami} in {home}"):
        found = home_ec2.describe_images(ImageIds=[source_ami])["Images"]  # one id: one answer
    if not found or found[0].get("State") != "available":
        raise FactoryError(f"{source_ami} is not an available AMI in {home}: bake {spec.name} first (`factory bake {spec.name}`)")
    source = found[0]
    account = source.get("OwnerId", "")
    snap_tags = sharing.snapshot_tags(home_ec2, source, home)

    here = RegionCopy(home, source_ami, "source")
    try:
        added = sharing.share_image(home_ec2, source_ami, home, wanted)
        if added:
            here.notes.append(f"shared with {_who(added)}")
        here.notes += sharing.share_snapshots(home_ec2, source, home, copy_accounts, {})
    except FactoryError as exc:  # the copies go on; the next run shares what is missing
        here.error = exc.message
    result.copies.append(here)

    def one(region: str) -> RegionCopy:
        say(f"copying {source_ami} to {region}")
        return _copy_into(home_ec2, clients_for(region).ec2(), source, home, region, arns[region], account, snap_tags, wanted,
                          copy_accounts, timeout, poll)

    if targets:
        with ThreadPoolExecutor(max_workers=len(targets), thread_name_prefix="copy") as pool:
            result.copies += list(pool.map(one, targets))
    if dist.copy_to:
        _copy_to_accounts(clients_for, result, dist, builder_key, where, say, timeout, poll)
    return result


def _copy_to_accounts(clients_for: Callable[[str], Any], result: DistributionResult, dist: Any, builder_key: str | None,
                      where: str, say: Callable[[str], None], timeout: float, poll: float) -> None:
    """Each `copy_to` account copies, in every region, the AMI this account has there (shared
    with it: launch permission and createVolumePermission, see sharing), into its own, with
    its own key of that region (the same `kms_keys` names, resolved in that account)."""
    from factory.distribute.accounts import assumed

    ours = {c.region: c.ami_id for c in result.copies if c.ami_id and c.error is None}
    jobs: list[tuple[Any, Any, str, str]] = []
    for target in dist.copy_to:
        theirs = assumed(clients_for(result.home), target.role, target.account)
        for region in ours:
            theirs(region).ec2()
            theirs(region).client("kms")
        keys_there = {r: dist.key(r) or (builder_key if r == result.home else None) for r in ours}
        missing = sorted(r for r, k in keys_there.items() if not k)
        if missing:
            raise FactoryError(f"{where}: distribute.kms_keys: no key for {', '.join(missing)} to encrypt account {target.account}'s copy; "
                               "name a customer-managed key (the alias resolves in that account)")
        arns = keys.key_arns(theirs, keys_there, True, f"{where} (in account {target.account})")
        jobs += [(target, theirs, region, arns[region]) for region in ours]

    def one(job: tuple[Any, Any, str, str]) -> RegionCopy:
        target, theirs, region, arn = job
        say(f"copying {ours[region]} into account {target.account} in {region}")
        with aws_errors(f"reading {ours[region]} in {region}"):
            source = clients_for(region).ec2().describe_images(ImageIds=[ours[region]])["Images"][0]  # one id: one answer
        entry = _copy_into(clients_for(region).ec2(), theirs(region).ec2(), source, region, region, arn, target.account, {}, [], [],
                           timeout, poll, cross_account=True)
        entry.account = target.account
        return entry

    with ThreadPoolExecutor(max_workers=max(1, len(jobs)), thread_name_prefix="copy-to") as pool:
        result.copies += list(pool.map(one, jobs))
    result.accounts = {t.account: theirs for t, theirs, _, _ in jobs if t.register}


def register_in_accounts(result: DistributionResult, spec: Any, config: Any, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """`copy_to` entries with `register: true`: the task registered in that account, in every
    region it has a copy (as its own account's regions are). account -> region -> RegisterResult."""
    from factory.distribute.registration import register_copies

    out: dict[str, Any] = {}
    for account, theirs in (result.accounts or {}).items():
        copies = {spec.name: {c.region: c.ami_id for c in result.copies if c.account == account and c.ami_id and not c.error}}
        out[account] = register_copies([spec], copies, theirs, config, progress=progress, include_home=True, account=account)
    return out


def _reread(home_ec2: Any, ami: str, home: str) -> dict[str, Any]:
    with aws_errors(f"reading {ami} in {home}"):
        return home_ec2.describe_images(ImageIds=[ami])["Images"][0]  # one id: one answer


def _copy_into(home_ec2: Any, ec2: Any, source: dict[str, Any], home: str, region: str, key_arn: str, account: str, snap_tags: dict[str, str],
               wanted: list[dict[str, str]], copy_accounts: list[str], timeout: float, poll: float,
               cross_account: bool = False) -> RegionCopy:
    """One region: find or make the copy, wait for it, share it; a failed copy discarded."""
    source_ami = source["ImageId"]
    entry = RegionCopy(region, None, "found")
    t = time.monotonic()
    try:
        image = copies.find_copy(ec2, source_ami)
        if image is not None and image.get("State") in copies.GONE:  # a dead run's failed copy
            entry.notes.append(copies.discard_copy(ec2, image, region) + copies.count_failure(home_ec2, source, region, home))
            source = _reread(home_ec2, source_ami, home)
            image = None
        if image is None:
            token = copies.client_token(resource_tags(source).get(IMAGE_HASH_TAG, ""), source_ami, region, account,
                                        copies.failures(source, region))
            entry.ami_id = copies.start_copy(ec2, source, home, key_arn, token, snap_tags, cross_account=cross_account)
            entry.status = "copied"
        else:
            entry.ami_id = image["ImageId"]
        try:
            image = copies.wait_available(ec2, entry.ami_id, region, timeout=timeout, poll=poll)
        except FactoryError as exc:
            gone = copies.discard_copy(ec2, entry.ami_id, region) + copies.count_failure(home_ec2, source, region, home)
            raise FactoryError(f"{exc.message}; {gone}") from None
        added = sharing.share_image(ec2, entry.ami_id, region, wanted)
        if added:
            entry.notes.append(f"shared with {_who(added)}")
        identity = {copies.COPY_OF_TAG: source_ami, copies.SOURCE_REGION_TAG: home,
                    IMAGE_HASH_TAG: resource_tags(source).get(IMAGE_HASH_TAG, "")}
        entry.notes += sharing.share_snapshots(ec2, image, region, copy_accounts, {**snap_tags, **identity})
    except FactoryError as exc:
        entry.status, entry.error = "failed", exc.message
        if entry.ami_id and "deregistered" in exc.message:
            entry.ami_id = None
    entry.notes.append(f"{time.monotonic() - t:.0f}s")
    return entry


def _who(permissions: list[dict[str, str]]) -> str:
    return ", ".join(next(iter(p.values())) for p in permissions)


def distribute_tasks(specs: list[Any], cloud: Any, config: Any, ami: str | None = None,
                     on_step: Callable[[str], None] | None = None) -> list[DistributionResult]:
    """`factory distribute`: each task's current AMI (its newest, or `ami` for one task) to
    its distribution; the core of the CLI command, also what finishes a bake's."""
    from factory.register.ami import find_ami

    results: list[DistributionResult] = []
    for spec in specs:
        dist = config.distribution_for(spec)
        if dist.empty:
            results.append(DistributionResult(spec.name, ami or "", spec.region))
            continue
        source = ami
        if source is None:
            image = find_ami(cloud.clients(spec.region), spec.name, spec.image.architecture)
            if image is None:
                raise FactoryError(f"{spec.name} has no AMI in {spec.region} to distribute: bake it first (`factory bake {spec.name}`)")
            source = image["ImageId"]
        results.append(distribute_image(cloud.clients, spec, source, dist, where=config.source, on_step=on_step,
                                        builder_key=config.builder.kms_key))
    return results
