"""`factory local publish-base FAMILY [--arch ARCH]`: the local cloud plays AWS releasing a
new ECS-optimized AMI.

AWS publishes a new ECS-optimized AMI every few weeks: a new image owned by Amazon, named
like the last one with a later date, and the family's public SSM parameter
(`/aws/service/ecs/optimized-ami/.../recommended/image_id`, factory.families) moved to it.
No account may write an `/aws/` parameter (PutParameter answers AccessDeniedException, on
AWS and in moto), so this is done inside the local cloud's server process, through a
control endpoint (`POST /_factory/publish-base`), as AWS does it on its side. Then
`factory status` sees a newer recommended base and the whole refresh (status red, bake,
status green) can be rehearsed and tested.

AWS moves the whole `.../recommended` tree at once: the JSON document (`.../recommended`:
image_id, image_name, image_version, ...) and its one-field children (`/image_id`,
`/image_name`, `/image_version`), each a new version; so does `publish`.

Two more things AWS does to a base, played the same way (`{"action": ...}` in the body):
- `rollback`: the recommended parameters move back to the image before the current one,
  as new versions (AWS rolled the EKS parameters back on 2022-05-13:
  awslabs/amazon-eks-ami#924); the newer image stays registered.
- `retire`: an AMI deprecated (its DeprecationTime set, in the past: ECS-optimized AMIs are
  deprecated two years after their release, ECS Developer Guide, "Amazon ECS-optimized Linux
  AMIs") or deregistered.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from factory.errors import LocalCloudError, UsageError

CONTROL_PATH = "/_factory/publish-base"


# -- the server side: runs inside the local cloud's process ------------------------------


def publish(region: str, parameter: str) -> dict[str, Any]:
    """Register a new Amazon-owned AMI like the one `parameter` names, and move `parameter` to it."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.utils import utcnow
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami
    from moto.ec2.utils import random_ami_id
    from moto.ssm.models import ssm_backends

    ssm = ssm_backends[DEFAULT_ACCOUNT_ID][region]
    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    versions = ssm._parameters[parameter]  # loads moto's /aws/service/ecs tree on first use
    if not versions:
        raise UsageError(f"the local cloud has no SSM parameter {parameter} in {region}")
    current = versions[-1]
    base = ec2.amis.get(current.value)
    if base is None:
        raise UsageError(f"{parameter} names {current.value}, which the local cloud does not have in {region}")
    names = {a.name for a in ec2.amis.values()}
    stamp = datetime.now(UTC).strftime("%Y%m%d")
    name, n = _later_name(base.name, stamp, 0), 0
    while name in names:
        n += 1
        name = _later_name(base.name, stamp, n)
    ami_id = random_ami_id()
    ec2.amis[ami_id] = Ami(
        ec2,
        ami_id,
        name=name,
        description=base.description,
        owner_id=base.owner_id,
        owner_alias="amazon",
        public=base.is_public,
        virtualization_type=base.virtualization_type,
        architecture=base.architecture,
        state="available",
        platform=base.platform,
        image_type=base.image_type,
        hypervisor=base.hypervisor,
        root_device_name=base.root_device_name,
        root_device_type=base.root_device_type,
        sriov=base.sriov,
        region_name=region,
        creation_date=utcnow(),
    )
    _move(ssm, parameter, ami_id, name)
    return {"parameter": parameter, "region": region, "previous": current.value, "ami_id": ami_id, "name": name, "architecture": base.architecture}


def _tree(parameter: str) -> str:
    """The `.../recommended` parameter of a `.../recommended/image_id` one (the tree's root)."""
    return parameter[: -len("/image_id")] if parameter.endswith("/image_id") else parameter


def _move(ssm: Any, parameter: str, ami_id: str, name: str) -> None:
    """A new version of every parameter of the `recommended` tree, naming `ami_id` (`name`)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.utils import utcnow
    from moto.ssm.models import Parameter

    root = _tree(parameter)
    doc_versions = ssm._parameters[root]
    doc = json.loads(doc_versions[-1].value) if doc_versions else {}
    version = re.search(r"\d{4}\.\d+\.(20\d{6}(?:\.\d+)?)", name)
    doc.update(image_id=ami_id, image_name=name)
    if version and "image_version" in doc:
        doc["image_version"] = re.sub(r"20\d{6}(?:\.\d+)?$", version.group(1), str(doc["image_version"]))
    values = {root: json.dumps(doc), f"{root}/image_id": ami_id}
    for child in ("image_name", "image_version"):
        if f"{root}/{child}" in ssm._parameters and child in doc:
            values[f"{root}/{child}"] = str(doc[child])
    for key, value in values.items():
        versions = ssm._parameters[key]
        current = versions[-1] if versions else None
        versions.append(
            Parameter(
                account_id=DEFAULT_ACCOUNT_ID,
                name=key,
                value=value,
                parameter_type=current.parameter_type if current else "String",
                description=current.description if current else None,
                allowed_pattern=None,
                keyid=None,
                last_modified_date=utcnow(),
                version=(current.version if current else 0) + 1,
                data_type=current.data_type if current else "text",
            )
        )


def rollback(region: str, parameter: str) -> dict[str, Any]:
    """Move the recommended parameters back to the image the parameter named before its current one."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends
    from moto.ssm.models import ssm_backends

    ssm = ssm_backends[DEFAULT_ACCOUNT_ID][region]
    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    versions = ssm._parameters[parameter]
    current = versions[-1].value if versions else None
    earlier = [v.value for v in versions[:-1] if v.value != current]
    if not earlier:
        raise UsageError(f"{parameter} in {region} has named no other image to roll back to: publish one first")
    back = earlier[-1]
    image = ec2.amis.get(back)
    if image is None:
        raise UsageError(f"{parameter} named {back} before, which the local cloud no longer has in {region}")
    _move(ssm, parameter, back, image.name)
    return {"parameter": parameter, "region": region, "previous": current, "ami_id": back, "name": image.name, "architecture": image.architecture}


def retire(region: str, ami_id: str, how: str) -> dict[str, Any]:
    """Deprecate (DeprecationTime a minute ago) or deregister an AMI, as AWS does to old ECS-optimized ones."""
    from datetime import timedelta

    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.core.utils import utcnow
    from moto.ec2.models import ec2_backends

    ec2 = ec2_backends[DEFAULT_ACCOUNT_ID][region]
    image = ec2.amis.get(ami_id)
    if image is None:
        raise UsageError(f"the local cloud has no AMI {ami_id} in {region}")
    if how == "deprecate":
        image.deprecation_time = (utcnow() - timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:00.000Z")
    elif how == "deregister":
        ec2.deregister_image(ami_id)
    else:
        raise UsageError(f"retire: how must be deprecate or deregister, not {how!r}")
    return {"region": region, "ami_id": ami_id, "done": how}


def _later_name(name: str, stamp: str, n: int) -> str:
    """The base's name with today's date in place of its own (`.N` when published again today)."""
    new = stamp + (f".{n}" if n else "")
    replaced, found = re.subn(r"(?<!\d)20\d{6}(?!\d)", new, name, count=1)
    return replaced if found else f"{name}-{new}"


def handle(body: bytes) -> dict[str, Any]:
    """The control endpoint: {"region", "parameter"} -> what `publish` did; with "action":
    "rollback", what `rollback` did; {"action": "retire", "region", "ami_id", "how"}: `retire`."""
    try:
        request = json.loads(body or b"{}")
        action = request.get("action", "publish")
        if action == "retire":
            return retire(str(request["region"]), str(request["ami_id"]), str(request["how"]))
        if action == "rollback":
            return rollback(str(request["region"]), str(request["parameter"]))
        if action != "publish":
            raise UsageError(f"publish-base: unknown action {action!r} (publish, rollback or retire)")
        return publish(str(request["region"]), str(request["parameter"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"publish-base needs a JSON body with region and parameter ({exc})") from None


# -- the client side: `factory local publish-base` and the tests -------------------------


def publish_base(endpoint: str, family: str, architecture: str = "x86_64", region: str = "us-east-1", rollback: bool = False,
                 accelerator: str = "none") -> dict[str, Any]:
    """Ask the running local cloud to publish a new ECS-optimized AMI of `family` (or, with
    `rollback`, to move its recommended parameters back to the image before)."""
    from factory.families import FAMILIES

    if family.startswith("ecs-"):
        family = family[4:]
    if family not in FAMILIES:
        raise UsageError(f"unknown family {family!r}: use one of {', '.join(FAMILIES)} (or ecs-{next(iter(FAMILIES))}, as a spec's image.base says)")
    if architecture not in ("x86_64", "arm64"):
        raise UsageError(f"--arch must be x86_64 or arm64, not {architecture!r}")
    if accelerator not in ("none", "nvidia"):
        raise UsageError(f"--accelerator must be none or nvidia, not {accelerator!r}")
    parameter = FAMILIES[family].ssm_parameter(architecture, accelerator)
    if not parameter:
        raise UsageError(FAMILIES[family].no_base_reason(architecture, accelerator) or f"no {family} {architecture} image")
    return _control(endpoint, {"region": region, "parameter": parameter, "action": "rollback" if rollback else "publish"})


def retire_base(endpoint: str, ami_id: str, how: str = "deprecate", region: str = "us-east-1") -> dict[str, Any]:
    """Ask the running local cloud to deprecate or deregister a (base) AMI."""
    if how not in ("deprecate", "deregister"):
        raise UsageError(f"how must be deprecate or deregister, not {how!r}")
    return _control(endpoint, {"action": "retire", "region": region, "ami_id": ami_id, "how": how})


def _control(endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
    payload = json.dumps(request).encode()
    req = urllib.request.Request(endpoint + CONTROL_PATH, data=payload, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise LocalCloudError(f"the local cloud refused to publish a base AMI: {exc.read().decode(errors='replace')}") from None
    except OSError as exc:
        raise LocalCloudError(f"cannot reach the local cloud at {endpoint} ({exc}); is `factory local up` running?") from None
