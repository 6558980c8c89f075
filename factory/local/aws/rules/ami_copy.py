"""CopyImage as AWS runs it, where factory's distribution depends on it and moto differs.

| AWS | moto 5 | ours |
| --- | --- | --- |
| a `ClientToken` seen before answers the first call's AMI; other parameters fail `IdempotentParameterMismatch` | ignores the token: every retry makes another copy | answers the first copy, or the mismatch error |
| `CopyImageTags=true` copies the source's user-defined tags (never `aws:` ones); by default none | copies no tag | copies them when asked |
| `TagSpecifications` tag the new AMI (`image`) and its snapshots (`snapshot`) at creation | ignored | applied |
| `Encrypted` with `KmsKeyId` encrypts the copy's snapshots with that key; a `KmsKeyId` without `Encrypted` is refused; a key that is not there fails | ignored: the snapshot is unencrypted | the copy's snapshots encrypted with the key's ARN; `InvalidParameterCombination` / `InvalidKMSKey.NotFound` (moto's KMS in that account and region) |
| the copy is `pending` until its snapshots are copied, then `available`, or `failed` with a `StateReason` | `available` at once | `pending` for `copy_delay` seconds; `failed` when the `broken` fault hit the call |
| an AMI another account shared (launch permission to the caller, createVolumePermission on its snapshots) can be copied into the caller's account | looks for the source in the caller's own account only | found in the account that owns it when it is shared with the caller, else `InvalidAMIID.NotFound` |

AWS sources: EC2 API reference, CopyImage (`ClientToken`, `CopyImageTags`: "Default: Your
user-defined AMI tags are not copied", `TagSpecifications`, `Encrypted`/`KmsKeyId`: "If you
specify a KMS key, you must also set the encrypted state to true"); EC2 User Guide, "Copy an
AMI" (the copy's `pending` state, "Launch permissions ... are not copied", copying an AMI
shared with you needs read access to its snapshots); "Ensuring idempotency in Amazon EC2 API
requests"; botocore's EC2 model (`CopyImageRequest`, `StateReason`).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from factory.local.aws.faults import BROKEN_HEADER
from factory.local.aws.rules import Settings

_COPY_PARAMS = ("SourceImageId", "SourceRegion", "Name", "Description", "Encrypted", "KmsKeyId", "CopyImageTags")


def install(settings: Settings) -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError, InvalidAMIIdError
    from moto.ec2.models import ec2_backends
    from moto.ec2.models.amis import Ami
    from moto.ec2.responses.amis import AmisResponse

    lock = threading.Lock()
    copies: dict[str, tuple[float, bool]] = {}  # copy's AMI id -> (made at, broken)
    made_by_token: dict[tuple[str, str, str], tuple[str, tuple[Any, ...]]] = {}

    # An AMI's state: a copy is pending for copy_delay, failed when broken; the rest as moto keeps it.
    def get_state(self: Any) -> str:
        at, broken = copies.get(self.id, (0.0, False))
        if broken:
            return "failed"
        if at and time.monotonic() - at < settings.copy_delay:
            return "pending"
        return self.__dict__.get("_state", "available")

    def set_state(self: Any, value: str) -> None:
        self.__dict__["_state"] = value

    Ami.state = property(get_state, set_state)

    def source_image(backend: Any, account: str, source_id: str, source_region: str) -> Any:
        """The source in the caller's account, else in the account that shared it with the caller."""
        own = ec2_backends[account][source_region]
        if source_id in own.amis:
            return own.amis[source_id]
        for other, regions in ec2_backends.items():
            if other == account or source_region not in regions:
                continue
            image = regions[source_region].amis.get(source_id)
            if image is None:
                continue
            if {"UserId": account} in image.launch_permissions:
                snapshot = getattr(image, "ebs_snapshot", None)
                if snapshot is not None and account not in snapshot.create_volume_permission_userids:
                    raise EC2ClientError("InvalidAMIID.Unavailable", f"the snapshots of {source_id} are not shared with account {account} "
                                         "(createVolumePermission): it cannot be copied")
                return image
        raise InvalidAMIIdError(source_id)

    def copy_image(self: Any) -> Any:
        token = self._get_param("ClientToken")
        account, region = self.current_account, self.region
        request = tuple(str(self._get_param(name)) for name in _COPY_PARAMS)
        key = (account, region, token or "")
        if token:
            with lock:
                seen = made_by_token.get(key)
            if seen is not None:
                image_id, first = seen
                if first != request:
                    raise EC2ClientError("IdempotentParameterMismatch",
                                         f"The client token {token} was used with other parameters by an earlier CopyImage.")
                return ActionResult({"ImageId": image_id})
        encrypted = str(self._get_param("Encrypted", False)).lower() == "true"
        kms_key = self._get_param("KmsKeyId")
        if kms_key and not encrypted:
            raise EC2ClientError("InvalidParameterCombination", "KmsKeyId requires Encrypted set to true")
        key_arn = _key_arn(account, region, kms_key) if kms_key else None
        source_region = self._get_param("SourceRegion")
        source = source_image(self.ec2_backend, account, self._get_param("SourceImageId"), source_region)
        self.error_on_dryrun()
        from moto.ec2.utils import random_ami_id

        image_id = random_ami_id()
        image = Ami(self.ec2_backend, image_id, source_ami=source, name=self._get_param("Name"),
                    description=self._get_param("Description"))
        image.root_device_name = source.root_device_name
        image.root_device_type = source.root_device_type
        image.boot_mode = source.boot_mode
        self.ec2_backend.amis[image_id] = image
        broken = bool(self.normalized_request.headers.get(BROKEN_HEADER))
        with lock:
            copies[image_id] = (time.monotonic(), broken)
            if token:
                made_by_token[key] = (image_id, request)
        if broken:
            image.state_reason = {"Code": "Client.CopyFailed", "Message": "failed by `factory local fault` (kind broken) on ec2:CopyImage"}
        snapshot = image.ebs_snapshot
        snapshot.encrypted = encrypted or bool(getattr(source.ebs_snapshot, "encrypted", False))
        snapshot.kms_key_id = key_arn or getattr(source.ebs_snapshot, "kms_key_id", None)
        tags: dict[str, dict[str, str]] = {"image": {}, "snapshot": {}}
        if str(self._get_param("CopyImageTags", False)).lower() == "true" and source.owner_id == account:
            tags["image"].update(_tags_of(ec2_backends[account][source_region], source))
        for kind, given in self._parse_tag_specification().items():
            if kind in tags:
                tags[kind].update(given)
        if tags["image"]:
            self.ec2_backend.create_tags([image_id], tags["image"])
        if tags["snapshot"]:
            self.ec2_backend.create_tags([snapshot.id], tags["snapshot"])
        return ActionResult({"ImageId": image_id})

    AmisResponse.copy_image = copy_image


def _tags_of(backend: Any, resource: Any) -> dict[str, str]:
    """A moto resource's tags, `aws:` ones left out (CopyImageTags never copies them)."""
    found = backend.describe_tags(filters={"resource-id": [resource.id]})  # moto's backend in-process: no pages
    return {t["key"]: t["value"] for t in found if not t["key"].startswith("aws:")}


def _key_arn(account: str, region: str, key: str) -> str:
    """The ARN of a KMS key (id, ARN, alias or alias ARN) in moto's KMS of that account and region."""
    from moto.ec2.exceptions import EC2ClientError
    from moto.kms.models import kms_backends

    kms = kms_backends[account][region]
    try:
        return kms.describe_key(key).arn  # one key: one answer
    except Exception:  # moto's NotFoundException and friends
        raise EC2ClientError("InvalidKMSKey.NotFound", f"The KMS key {key} does not exist in {region} for account {account}") from None
