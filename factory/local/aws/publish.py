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
    from moto.ssm.models import Parameter, ssm_backends

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
    versions.append(
        Parameter(
            account_id=DEFAULT_ACCOUNT_ID,
            name=parameter,
            value=ami_id,
            parameter_type=current.parameter_type,
            description=current.description,
            allowed_pattern=None,
            keyid=None,
            last_modified_date=utcnow(),
            version=current.version + 1,
            data_type=current.data_type,
        )
    )
    return {"parameter": parameter, "region": region, "previous": current.value, "ami_id": ami_id, "name": name, "architecture": base.architecture}


def _later_name(name: str, stamp: str, n: int) -> str:
    """The base's name with today's date in place of its own (`.N` when published again today)."""
    new = stamp + (f".{n}" if n else "")
    replaced, found = re.subn(r"(?<!\d)20\d{6}(?!\d)", new, name, count=1)
    return replaced if found else f"{name}-{new}"


def handle(body: bytes) -> dict[str, Any]:
    """The control endpoint: {"region", "parameter"} -> what `publish` did."""
    try:
        request = json.loads(body or b"{}")
        return publish(str(request["region"]), str(request["parameter"]))
    except (KeyError, ValueError, TypeError) as exc:
        raise UsageError(f"publish-base needs a JSON body with region and parameter ({exc})") from None


# -- the client side: `factory local publish-base` and the tests -------------------------


def publish_base(endpoint: str, family: str, architecture: str = "x86_64", region: str = "us-east-1", accelerator: str = "none") -> dict[str, Any]:
    """Ask the running local cloud to publish a new ECS-optimized AMI of `family`."""
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
    payload = json.dumps({"region": region, "parameter": parameter}).encode()
    req = urllib.request.Request(endpoint + CONTROL_PATH, data=payload, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise LocalCloudError(f"the local cloud refused to publish a base AMI: {exc.read().decode(errors='replace')}") from None
    except OSError as exc:
        raise LocalCloudError(f"cannot reach the local cloud at {endpoint} ({exc}); is `factory local up` running?") from None
