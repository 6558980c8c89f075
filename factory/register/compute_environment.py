"""The tier's managed Batch compute environment, pinned to the launch template's version.

Scaling changes (min/max vCPUs) are updated in place. Other changes are infrastructure
updates, done in place when AWS Batch allows it (the service-linked role, and a
BEST_FIT_PROGRESSIVE / SPOT_* allocation strategy: the Batch user guide, "Perform
infrastructure updates"), with factory's `updatePolicy` (config `batch.update_timeout_minutes`)
so running jobs are not cut off after AWS's default 30 minutes. Otherwise a new
environment `factory-<tier>-<hash>` is created, the queue is moved to it, and the old
one is disabled and deleted (blue/green).

A setting removed from the spec or the config is removed in AWS too: `ec2KeyPair` by
sending an empty string (UpdateComputeEnvironment's documented way), `bidPercentage` by
its default of 100 % on SPOT and not at all on EC2, where it has no meaning.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import ClientError

from factory.aws import Clients, aws_errors, error_message
from factory.errors import FactoryError
from factory.register.names import TAG_MANAGED, TAG_TIER
from factory.register.network import is_service_linked
from factory.register.reads import compute_environments
from factory.register.results import Change, Network
from factory.register.run import Run
from factory.register.targets import TierTarget
from factory.register.waits import batch_standing, until_all_described

# Allocation strategies that allow infrastructure updates in place; BEST_FIT needs a new environment.
INFRA_UPDATE_STRATEGIES = ("BEST_FIT_PROGRESSIVE", "SPOT_CAPACITY_OPTIMIZED", "SPOT_PRICE_CAPACITY_OPTIMIZED")
# Scaling settings are always updated in place; infrastructure ones in place only under the
# conditions above; the rest only by a new environment.
SCALING_KEYS = ("minvCpus", "maxvCpus")
INFRA_KEYS = (
    "type",
    "allocationStrategy",
    "instanceTypes",
    "bidPercentage",
    "subnets",
    "securityGroupIds",
    "instanceRole",
    "launchTemplate",
    "ec2Configuration",
    "ec2KeyPair",
    "tags",
)
REPLACE_KEYS = ("spotIamFleetRole",)
SPOT_DEFAULT_BID = 100  # AWS Batch: bidPercentage defaults to 100 % of the On-Demand price
# DeleteComputeEnvironment right after the queue moved away (terraform-provider-aws #46925).
TRANSIENT_DELETE = ("found existing JobQueue relationship",)


@dataclass
class Region:
    """Per-region context shared by the tiers of one run."""

    clients: Clients
    network: Network
    instance_role: str
    service_role: str | None
    spot_fleet_role: str | None
    compute_environments: list[dict[str, Any]]  # listed once per region (tiers never share one)


@dataclass
class Pending:
    """A change sent to an environment that register waits for (with the others: wait_all)."""

    name: str
    want: Mapping[str, Any] | None  # the computeResources the describe must show
    lt: dict[str, Any] | None
    policy: Mapping[str, Any] | None = None  # an infrastructure update's updatePolicy
    state: str = "ENABLED"
    rolling: bool = False  # settled as UPDATING: the new settings shown, old instances draining


@dataclass
class Outcome:
    """What reconcile decided for a tier's environment."""

    name: str
    arn: str | None
    olds: list[dict[str, Any]]  # environments to retire once the queue has moved
    pending: Pending | None = None  # what to wait for (None: nothing was sent)
    deferred: bool = False  # an update was due but not sent: the environment is still UPDATING
    updating: bool = False  # found UPDATING (an earlier infrastructure update still rolling)

    @property
    def busy(self) -> str | None:
        """UPDATING while an infrastructure update rolls (found so, or sent by this run and
        accepted as rolling): AWS puts no queue in front of it until it is VALID again."""
        return "UPDATING" if self.updating or (self.pending is not None and self.pending.rolling) else None


def ec2_configuration(target: TierTarget, ami_id: str | None) -> list[dict[str, str]]:
    """Batch's ec2Configuration for the tier. A GPU tier names the family's NVIDIA image type
    and the tier's AMI as its override: Batch matches each entry to instance types, and
    without it a g/p instance would be given the CPU image type's AMI (Batch User Guide,
    "AMI selection order"; Ec2Configuration in the Batch API reference)."""
    accelerator = getattr(target, "accelerator", "none")
    entry = {"imageType": target.family.image_type(accelerator)}
    if accelerator != "none" and ami_id:
        entry["imageIdOverride"] = ami_id
    return [entry]


def desired(run: Run, target: TierTarget, region: Region, lt_name: str, lt_version: int, ami_id: str | None = None) -> dict[str, Any]:
    b = target.batch
    spot = b.provisioning == "spot"
    cr: dict[str, Any] = {
        "type": "SPOT" if spot else "EC2",
        "allocationStrategy": b.allocation_strategy,
        "minvCpus": int(b.min_vcpus),
        "maxvCpus": int(b.max_vcpus),
        "instanceTypes": list(b.instance_types),
        "subnets": list(region.network.subnets),
        "securityGroupIds": list(region.network.security_groups),
        "instanceRole": region.instance_role,
        "launchTemplate": {"launchTemplateName": lt_name, "version": str(lt_version)},
        "ec2Configuration": ec2_configuration(target, ami_id),
        "tags": {TAG_TIER: target.tier, TAG_MANAGED: "true", "Name": target.name},
    }
    if spot and b.spot_bid_percentage is not None:
        cr["bidPercentage"] = int(b.spot_bid_percentage)
    if spot and region.spot_fleet_role:
        cr["spotIamFleetRole"] = region.spot_fleet_role
    if run.config.batch.ec2_key_pair:
        cr["ec2KeyPair"] = run.config.batch.ec2_key_pair
    return cr


def _norm(key: str, value: Any, spot: bool) -> Any:
    if key == "bidPercentage":
        return int(value if value is not None else SPOT_DEFAULT_BID) if spot else None
    if value in (None, ""):
        return None
    if key in ("instanceTypes", "subnets", "securityGroupIds"):
        return sorted(value)
    if key == "launchTemplate":
        # AWS may answer with the id, the name or both; compare what identifies it.
        return (str(value.get("version")),)
    if key == "ec2Configuration":
        return sorted((c.get("imageType"), c.get("imageIdOverride")) for c in value)
    if key in ("minvCpus", "maxvCpus"):
        return int(value)
    return value


def differences(have: Mapping[str, Any], want: Mapping[str, Any], lt: dict[str, Any]) -> dict[str, str]:
    """key -> 'old -> new' for every compute resource setting that differs."""
    spot = want.get("type") == "SPOT"
    out: dict[str, str] = {}
    for key in SCALING_KEYS + INFRA_KEYS + REPLACE_KEYS:
        a, b = _norm(key, have.get(key), spot), _norm(key, want.get(key), spot)
        if key == "launchTemplate" and have.get(key):
            h = have[key]
            same_lt = h.get("launchTemplateName") == lt["name"] or (lt.get("id") and h.get("launchTemplateId") == lt["id"])
            if not same_lt:
                a = ("other",)
        if a != b:
            if key == "launchTemplate":
                out[key] = f"launch template version {have.get(key, {}).get('version')} -> {want[key]['version']}"
            elif b is None:
                out[key] = f"{key} {have.get(key)!r} removed"
            else:
                out[key] = f"{key} {have.get(key)!r} -> {want.get(key)!r}"
    return out


def update_values(diffs: Mapping[str, str], want: Mapping[str, Any]) -> dict[str, Any]:
    """The computeResources of an UpdateComputeEnvironment that makes `diffs` go away."""
    out: dict[str, Any] = {}
    for key in diffs:
        if key in want:
            out[key] = want[key]
        elif key == "ec2KeyPair":
            out[key] = ""  # UpdateComputeEnvironment: an empty string removes the key pair
        elif key == "bidPercentage" and want.get("type") == "SPOT":
            out[key] = SPOT_DEFAULT_BID
    if "launchTemplate" in out:
        # New instances come from the new version only after an infrastructure update.
        out["updateToLatestImageVersion"] = True
    return out


def _settings_hash(cr: Mapping[str, Any], service_role: str | None) -> str:
    """A short, stable hash of a compute environment's settings (its replacement's name suffix)."""
    body = {k: v for k, v in cr.items() if k not in SCALING_KEYS}
    body["serviceRole"] = service_role
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:8]


def reconcile(
    run: Run, batch: Any, target: TierTarget, region: Region, lt: dict[str, Any], queue: dict[str, Any] | None, changes: list[Change],
    ami_id: str | None = None,
) -> Outcome:
    """Sends what the tier's environment needs and returns at once: the caller waits for
    every tier's `pending` together (wait_all). `ami_id`: the tier's AMI (a GPU tier names it
    in ec2Configuration)."""
    base = target.name
    want = desired(run, target, region, lt["name"], lt["version"], ami_id)
    policy = run.config.batch.update_policy
    all_ces = region.compute_environments
    by_name = {c["computeEnvironmentName"]: c for c in all_ces}
    ours = [
        c
        for c in all_ces
        if (c.get("tags") or {}).get(TAG_TIER) == target.tier
        and (c.get("tags") or {}).get(TAG_MANAGED) == "true"
        and c.get("status") not in ("DELETING", "DELETED")
    ]
    if base in by_name and by_name[base] not in ours and (by_name[base].get("tags") or {}).get(TAG_MANAGED) != "true":
        raise FactoryError(f"compute environment {base} exists but is not managed by factory (no tag {TAG_MANAGED}=true): delete or rename it")
    queue_ces = [o["computeEnvironment"] for o in sorted((queue or {}).get("computeEnvironmentOrder", []), key=lambda o: o["order"])]

    def pick() -> dict[str, Any] | None:
        for arn in queue_ces:
            for c in ours:
                if arn in (c["computeEnvironmentArn"], c["computeEnvironmentName"]):
                    return c
        for c in ours:  # a replacement an interrupted run created but did not put in the queue
            if not differences(c.get("computeResources", {}), want, lt) and c.get("serviceRole") == region.service_role:
                return c
        for c in ours:
            if c["computeEnvironmentName"] == base:
                return c
        return ours[0] if ours else None

    current = pick()
    if current is None:
        changes.append(Change("compute-environment", base, "create", f"new: {want['type']} {want['allocationStrategy']}, {want['minvCpus']}-{want['maxvCpus']} vCPUs, launch template {lt['name']} v{lt['version']}"))
        arn, pending = _create(run, batch, base, want, target.tags, region)
        return Outcome(base, arn, [], pending)

    name, arn = current["computeEnvironmentName"], current["computeEnvironmentArn"]
    have = current.get("computeResources", {})
    diffs = differences(have, want, lt)
    role_changed = not (
        current.get("serviceRole") == region.service_role or (is_service_linked(region.service_role) and is_service_linked(current.get("serviceRole")))
    )
    retire = [c for c in ours if c is not current]
    infra = [k for k in diffs if k in INFRA_KEYS]
    blockers: list[str] = []
    if any(k in REPLACE_KEYS for k in diffs):
        blockers.append("spotIamFleetRole cannot be updated")
    if role_changed:
        blockers.append(f"service role {current.get('serviceRole')} -> {region.service_role or 'service-linked'}")
    if infra:
        if have.get("allocationStrategy") not in INFRA_UPDATE_STRATEGIES:
            blockers.append(f"allocation strategy {have.get('allocationStrategy')} allows no infrastructure update")
        elif want["allocationStrategy"] not in INFRA_UPDATE_STRATEGIES:
            blockers.append(f"cannot update to allocation strategy {want['allocationStrategy']}")
        if not is_service_linked(current.get("serviceRole")):
            blockers.append("infrastructure updates need Batch's service-linked role")

    if blockers:
        new_name = f"{base}-{_settings_hash(want, region.service_role)}"
        reason = "; ".join(diffs.values()) or "service role"
        changes.append(Change("compute-environment", new_name, "replace", f"replaces {name} ({reason}): {'; '.join(blockers)}"))
        existing = by_name.get(new_name)
        pending: Pending | None = None
        if existing is not None and existing.get("status") not in ("DELETING", "DELETED"):
            new_arn = existing["computeEnvironmentArn"]
            if not run.dry_run:  # left by an interrupted run: a queue takes it only once VALID
                pending = Pending(new_name, want, lt)
        else:
            new_arn, pending = _create(run, batch, new_name, want, target.tags, region)
        return Outcome(new_name, new_arn, [c for c in ours if c["computeEnvironmentName"] != new_name], pending)

    updates = update_values(diffs, want)
    if current.get("state") != "ENABLED":
        diffs["state"] = f"state {current.get('state')} -> ENABLED"
    pending = None
    deferred = False
    if current.get("status") == "CREATING" and not run.dry_run:  # an interrupted run's: AWS takes no update before it is VALID
        wait_until_settled(run, batch, name, None, None, state=str(current.get("state") or "ENABLED"))
    busy = "UPDATING" if current.get("status") == "UPDATING" else None
    if busy and not diffs:
        # An earlier infrastructure update is still replacing instances; the describe shows
        # its settings, which are what this run wants: nothing to send.
        changes.append(Change("compute-environment", name, "unchanged", f"{busy}: {rolling_text(_policy_of(current))}; settings match (launch template v{lt['version']})"))
    elif busy:
        # AWS takes no update while an environment is CREATING or UPDATING (the local cloud
        # refuses it the same way); an infrastructure update stays UPDATING until the old
        # instances are gone, up to the update policy's timeout. So nothing is sent now.
        deferred = True
        changes.append(Change(
            "compute-environment", name, "deferred",
            f"not sent: {name} is {busy} ({rolling_text(_policy_of(current))}) and AWS takes no update until it is VALID; "
            f"wanted: {'; '.join(diffs.values())}. Run `factory register` again once it is VALID",
        ))
    elif diffs:
        # The update policy rides with each infrastructure update (CreateComputeEnvironment
        # takes none), so the update that rolls the image is the one it governs.
        kind = f"infrastructure update (running jobs get {_policy_text(policy)})" if infra else "scaling update"
        changes.append(Change("compute-environment", name, "update", f"{kind}: {'; '.join(diffs.values())}"))
        if not run.dry_run:
            run.progress(f"updating compute environment {name}")
            kw: dict[str, Any] = {"computeEnvironment": name, "state": "ENABLED"}
            if updates:
                kw["computeResources"] = updates
            if infra:
                kw["updatePolicy"] = policy
            with aws_errors(f"updating compute environment {name}"):
                batch.update_compute_environment(**kw)
            pending = Pending(name, want, lt, policy if infra else None)
    else:
        changes.append(Change("compute-environment", name, "unchanged", f"launch template v{lt['version']}, settings match"))
    run.sync_batch_tags(batch, "compute-environment", name, arn, current.get("tags"), target.tags, changes)
    return Outcome(name, arn, retire, pending, deferred, updating=busy is not None)


def rolling_text(policy: Mapping[str, Any]) -> str:
    """What an infrastructure update in progress means for the old instances."""
    if policy.get("terminateJobsOnUpdate"):
        return "rolling: old instances are replaced, their jobs terminated"
    return f"rolling: old instances drain for up to {int(policy.get('jobExecutionTimeoutMinutes', 30))} min"


def _policy_of(ce: Mapping[str, Any]) -> dict[str, Any]:
    have = ce.get("updatePolicy") or {}
    return {"terminateJobsOnUpdate": bool(have.get("terminateJobsOnUpdate", False)), "jobExecutionTimeoutMinutes": int(have.get("jobExecutionTimeoutMinutes", 30))}


def _policy_text(policy: Mapping[str, Any]) -> str:
    if policy["terminateJobsOnUpdate"]:
        return "no time: terminated at once"
    return f"{policy['jobExecutionTimeoutMinutes']} min to finish"


def _create(run: Run, batch: Any, name: str, cr: dict[str, Any], tags: dict[str, str], region: Region) -> tuple[str | None, Pending | None]:
    """Sends CreateComputeEnvironment; (arn, what to wait for)."""
    if run.dry_run:
        return None, None
    run.progress(f"creating compute environment {name}")
    kw: dict[str, Any] = {"computeEnvironmentName": name, "type": "MANAGED", "state": "ENABLED", "computeResources": cr, "tags": tags}
    if region.service_role:
        kw["serviceRole"] = region.service_role
    with aws_errors(f"creating compute environment {name}"):
        try:
            arn = batch.create_compute_environment(**kw)["computeEnvironmentArn"]
        except ClientError as exc:
            if "ServiceRole is required" in error_message(exc):
                raise FactoryError(
                    f"creating compute environment {name}: this endpoint needs a service role: set batch.service_role in factory.yaml"
                ) from None
            raise
    return arn, Pending(name, cr, None)


def wait_until_settled(
    run: Run, batch: Any, name: str, want: Mapping[str, Any] | None, lt: dict[str, Any] | None, policy: Mapping[str, Any] | None = None, state: str = "ENABLED"
) -> Pending:
    """Until the environment exists, is VALID, in `state`, and shows what was asked (`want`,
    `policy`): a describe right after a change may still show the old settings as VALID."""
    pending = Pending(name, want, lt, policy, state)
    wait_all(run, batch, [pending])
    return pending


def wait_all(run: Run, batch: Any, pendings: list[Pending]) -> None:
    """One wait for every environment in `pendings` (waits.until_all_described)."""
    by_name = {p.name: p for p in pendings}
    until_all_described(run.waiter, "compute environment", list(by_name), lambda names: compute_environments(batch, names),
                        "computeEnvironmentName", lambda n, ce: standing(by_name[n], ce))


def standing(pending: Pending, ce: Mapping[str, Any] | None) -> tuple[bool, str]:
    """(settled, where it stands) for one environment's describe (None: not visible yet).

    An infrastructure update (`policy` given) has settled once the describe shows its
    settings and policy, even while the environment is UPDATING: AWS keeps it UPDATING while
    it replaces instances, and the old ones may run jobs for the policy's whole timeout
    (factory's default: two days). Waiting for VALID would time out; `rolling` says so."""
    if ce is not None and ce.get("status") == "UPDATING" and pending.policy is not None and ce.get("state") == pending.state:
        if not _unseen(pending, ce) and _policy_of(ce) == dict(pending.policy):
            pending.rolling = True
            return True, "UPDATING (rolling)"
    where = batch_standing("compute environment", pending.name, [ce] if ce else [], pending.state, "; fix it in the Batch console or its settings")
    if where is not None:
        return False, where
    assert ce is not None
    unseen = _unseen(pending, ce)
    if unseen:
        return False, "VALID with the old settings (" + "; ".join(unseen.values()) + ")"
    if pending.policy is not None and _policy_of(ce) != dict(pending.policy):
        return False, "VALID with the old update policy"
    return True, "VALID"


def _unseen(pending: Pending, ce: Mapping[str, Any]) -> dict[str, str]:
    """The asked-for settings a describe does not show yet."""
    if pending.want is None:
        return {}
    lt_ref = pending.lt or {"name": (pending.want.get("launchTemplate") or {}).get("launchTemplateName"), "id": None}
    return differences(ce.get("computeResources") or {}, pending.want, lt_ref)


def retire(
    run: Run, batch: Any, olds: list[dict[str, Any]], why: str, changes: list[Change], queues: tuple[str, ...] = (), force: bool = False
) -> None:
    """Disable, then delete, compute environments a replacement (or a retired tier) left
    behind; one that jobs of `queues` may still run on (factory.register.live_jobs) is left
    disabled and out of every queue, and deleted by a later run once they have ended.
    `force` deletes it anyway, saying which jobs that terminates."""
    from factory.register import live_jobs

    for ce in olds:
        name = ce["computeEnvironmentName"]
        tags = ce.get("tags") or {}
        retired_ms = live_jobs.tag_ms(tags.get(live_jobs.TAG_RETIRED))
        if queues and retired_ms is None and not run.dry_run:
            stamp = live_jobs.now_tag()
            with aws_errors(f"marking compute environment {name} retired"):
                batch.tag_resource(resourceArn=ce["computeEnvironmentArn"], tags={live_jobs.TAG_RETIRED: stamp})
            retired_ms = live_jobs.tag_ms(stamp)
        holders = live_jobs.placed_before(batch, list(queues), retired_ms)
        if holders and not force:
            live_jobs.drain(
                run.dry_run, changes, "compute-environment", name,
                f"{why}; {live_jobs.named(holders)} may still run on it, so it is disabled and out of every queue "
                "(no new jobs), and the next `factory register` deletes it once they have ended",
                ce.get("state"), lambda n=name: batch.update_compute_environment(computeEnvironment=n, state="DISABLED"),
            )
            continue
        changes.append(Change("compute-environment", name, "delete", why + (f"; --force: terminates {live_jobs.named(holders)}" if holders else "")))
        if run.dry_run:
            continue
        run.progress(f"retiring compute environment {name}")
        if ce.get("state") != "DISABLED":
            with aws_errors(f"disabling compute environment {name}"):
                batch.update_compute_environment(computeEnvironment=name, state="DISABLED")
        wait_until_settled(run, batch, name, None, None, state="DISABLED")
        with aws_errors(f"deleting compute environment {name}"):
            run.waiter.retry_while(TRANSIENT_DELETE, lambda n=name: batch.delete_compute_environment(computeEnvironment=n))
