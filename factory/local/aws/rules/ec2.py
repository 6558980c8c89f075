"""EC2 as AWS runs it, where factory depends on it and moto differs.

| AWS | moto 5 | ours |
| --- | --- | --- |
| `DeleteLaunchTemplateVersions` deletes the versions it can and answers 200 with a per-version failure list; the default version is never deleted | HTTP 500 (not implemented) | deletes; reports the default version and unknown versions as failures (codes from the API's `LaunchTemplateErrorCode`) |
| version numbers keep counting after a deletion | numbers are list positions | numbers are kept with each version, so a deletion shifts nothing |
| `CreateTags`/`DeleteTags` on a launch template show in `DescribeLaunchTemplates` | keeps the tags it was created with | reads the tags as they are now |
| `DeregisterImage` with `DeleteAssociatedSnapshots` deletes the AMI's snapshots and reports each | ignores the parameter | deletes them and answers `DeleteSnapshotResults` |
| `CreateVolume` with a `ClientToken` it has seen answers the volume it made then (its state now: `deleted` once it is deleted); with other parameters, `IdempotentParameterMismatch` | ignores the token: every retry makes a new volume | answers the first call's volume (`deleted` when it is gone), or the mismatch error |
| `DeleteSecurityGroup` fails `DependencyViolation` while an instance that is not terminated (stopped included) is in the group | deletes it | refuses with `DependencyViolation` until every such instance is terminated |
| `DeleteSnapshot` right after `DeregisterImage` can fail `InvalidSnapshot.InUse` for a while (now and then) | deletes at once | with `snapshot_release_delay` > 0 (off by default: Packer 1.6.6 relies on the race being rare), the snapshot stays in use that long |
| a deprecated AMI (its `DeprecationTime` passed) of another owner is left out of `DescribeImages` unless `IncludeDeprecated` is true; the answer carries `DeprecationTime` | has no deprecation | the local cloud's publish control (`factory.local.aws.publish.retire`) sets an AMI's deprecation time, as AWS does two years after an ECS-optimized AMI's release; `DescribeImages` then answers as AWS does |
| `DescribeImageReferences` lists the account's instances, launch templates (the newest `version-depth` versions, 10 by default) and SSM parameters that name each of at most 10 AMIs | not implemented (HTTP 500) | answers from moto's instances (the `state-name` option's states, all by default), launch template versions and parameters' current values, as `ImageReferences`; more than 10 AMIs is `InvalidParameterValue` |

AWS sources: EC2 Developer Guide, "Ensuring idempotency in Amazon EC2 API requests"
(a retry with the same client token completes without doing it again; other parameters
fail `IdempotentParameterMismatch`); botocore's EC2 model (`CreateVolumeRequest.ClientToken`,
an idempotency token); EC2 API reference, DeleteLaunchTemplateVersions ("You can't delete the
default version of a launch template"; the success and error sets), DeregisterImage
(`DeleteAssociatedSnapshots`), DeleteSecurityGroup ("If you attempt to delete a security
group that is associated with an instance ... the operation fails with
DependencyViolation"), DescribeImageReferences (`ImageId.N`: at most 10; the
`ResourceTypeOption` names `state-name` and `version-depth`, default all states and 10
versions) with the User Guide's "Identify your resources referencing specified AMIs",
DescribeImages `IncludeDeprecated` ("Default: No deprecated AMIs are included in the
response. If you are the AMI owner, all deprecated AMIs appear in the response regardless")
and `Image.DeprecationTime`, the ECS Developer Guide's "Amazon ECS-optimized Linux AMIs"
(they are deprecated two years after creation), and
botocore's EC2 model for the response shapes.
"""

from __future__ import annotations

import time
from typing import Any

from factory.local.aws.rules import Settings

# The CreateVolume parameters a retry with the same client token must repeat (and the volume's tags).
_CREATE_VOLUME_PARAMS = ("Size", "AvailabilityZone", "SnapshotId", "VolumeType", "Encrypted", "KmsKeyId", "Iops", "Throughput",
                         "MultiAttachEnabled")

# The local cloud's state folder, whose amis/ holds each AMI's file tree (set by moto_server.MotoServer.start).
ENV_AMI_TREES = "FACTORY_LOCAL_AMI_TREES"


def install(settings: Settings) -> None:
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import DependencyViolationError, EC2ClientError, InvalidLaunchTemplateVersionNotFound, InvalidSnapshotInUse
    from moto.ec2.models import EC2Backend
    from moto.ec2.models.launch_templates import LaunchTemplate, LaunchTemplateVersion
    from moto.ec2.responses.amis import AmisResponse
    from moto.ec2.responses.elastic_block_store import ElasticBlockStore
    from moto.ec2.responses.launch_templates import LaunchTemplates

    # Versions found by their number, not their place in the list.
    def create_version(self: Any, data: dict[str, Any], description: str) -> Any:
        number = max((v.number for v in self.versions), default=0) + 1
        version = LaunchTemplateVersion(self, number, data, description)
        self.versions.append(version)
        return version

    def get_version(self: Any, num: Any) -> Any:
        text = str(num).lower()
        if text == "$latest":
            return self.latest_version()
        if text == "$default":
            return self.default_version()
        for v in self.versions:
            if str(v.number) == str(num):
                return v
        raise InvalidLaunchTemplateVersionNotFound(template_id=self.id, version=num)

    def default_version(self: Any) -> Any:
        return self.get_version(self.default_version_number)

    def latest_version(self: Any) -> Any:
        return max(self.versions, key=lambda v: v.number)

    # A launch template's tags are the EC2 tag store's, as CreateTags/DeleteTags left them.
    LaunchTemplate.tags = property(lambda self: self.get_tags(), lambda self, value: None)

    LaunchTemplate.create_version = create_version
    LaunchTemplate.get_version = get_version
    LaunchTemplate.default_version = default_version
    LaunchTemplate.latest_version = latest_version

    def delete_launch_template_versions(self: Any) -> Any:
        name = self._get_param("LaunchTemplateName")
        template_id = self._get_param("LaunchTemplateId")
        numbers = [str(v) for v in self._get_param("LaunchTemplateVersion", []) or self._get_param("Versions", [])]
        self.error_on_dryrun()
        if name:
            template = self.ec2_backend.get_launch_template_by_name(name)
        else:
            template = self.ec2_backend.get_launch_template(template_id)
        done, failed = [], []
        for number in numbers:
            ident = {"LaunchTemplateId": template.id, "LaunchTemplateName": template.name, "VersionNumber": int(number) if number.isdigit() else 0}
            found = [v for v in template.versions if str(v.number) == number]
            if not found:
                failed.append({**ident, "ResponseError": {"Code": "launchTemplateVersionDoesNotExist", "Message": f"version {number} does not exist"}})
            elif template.is_default(found[0]):
                failed.append({**ident, "ResponseError": {"Code": "unexpectedError", "Message": "Cannot delete the default version of a launch template"}})
            else:
                template.versions.remove(found[0])
                done.append(ident)
        return ActionResult({"SuccessfullyDeletedLaunchTemplateVersions": done, "UnsuccessfullyDeletedLaunchTemplateVersions": failed})

    LaunchTemplates.delete_launch_template_versions = delete_launch_template_versions

    # Snapshots of a just-deregistered AMI stay in use a while; DeleteAssociatedSnapshots works.
    in_use_until: dict[str, tuple[float, str]] = {}  # snapshot id -> (until, AMI id)
    original_delete_snapshot = EC2Backend.delete_snapshot

    def delete_snapshot(self: Any, snapshot_id: str) -> Any:
        until, ami = in_use_until.get(snapshot_id, (0.0, ""))
        if time.monotonic() < until:
            raise InvalidSnapshotInUse(snapshot_id, ami)
        in_use_until.pop(snapshot_id, None)
        return original_delete_snapshot(self, snapshot_id)

    EC2Backend.delete_snapshot = delete_snapshot

    def deregister_image(self: Any) -> Any:
        ami_id = self._get_param("ImageId")
        with_snapshots = str(self._get_param("DeleteAssociatedSnapshots", False)).lower() == "true"
        self.error_on_dryrun()
        image = self.ec2_backend.amis.get(ami_id)
        snapshots = [m["Ebs"]["SnapshotId"] for m in image.block_device_mappings if (m.get("Ebs") or {}).get("SnapshotId")] if image else []
        self.ec2_backend.deregister_image(ami_id)
        _drop_tree(ami_id)
        result: dict[str, Any] = {"Return": True}
        if with_snapshots:
            outcomes = []
            for snapshot_id in snapshots:
                try:
                    original_delete_snapshot(self.ec2_backend, snapshot_id)
                    outcomes.append({"SnapshotId": snapshot_id, "ReturnCode": "success"})
                except Exception:
                    outcomes.append({"SnapshotId": snapshot_id, "ReturnCode": "internal-error"})
            result["DeleteSnapshotResults"] = outcomes
        else:
            for snapshot_id in snapshots:
                in_use_until[snapshot_id] = (time.monotonic() + settings.snapshot_release_delay, ami_id)
        return ActionResult(result)

    AmisResponse.deregister_image = deregister_image
    _deprecated_images_hidden(AmisResponse)

    # A security group an instance still uses (a stopped one too) cannot be deleted.
    original_delete_security_group = EC2Backend.delete_security_group

    def delete_security_group(self: Any, name: str | None = None, group_id: str | None = None) -> None:
        group = self.get_security_group_by_name_or_id(group_id or name)
        if group is not None:
            users = [i for i in self.all_instances() if i.state != "terminated" and any(g.id == group.id for g in i.security_groups)]
            if users:
                raise DependencyViolationError(f"resource {group.id} has a dependent object")
        return original_delete_security_group(self, name=name, group_id=group_id)

    EC2Backend.delete_security_group = delete_security_group

    # CreateVolume's client token: a retried call (its first answer lost) gets the same volume,
    # also once that volume is deleted: "the result of the original request is returned"
    # (EC2 developer guide, "Ensuring idempotency in Amazon EC2 API requests"), with its
    # state now: `deleted`, never a new volume.
    made_by_token: dict[tuple[str, str, str], tuple[Any, tuple[Any, ...]]] = {}  # (account, region, token) -> (volume, request)
    original_create_volume = ElasticBlockStore.create_volume
    from moto.ec2.models.elastic_block_store import Volume

    volume_status = Volume.status

    def status(self: Any) -> str:
        return "deleted" if getattr(self, "deleted_for_token", False) else volume_status.fget(self)

    Volume.status = property(status)

    def create_volume(self: Any) -> Any:
        token = self._get_param("ClientToken")
        if not token:
            return original_create_volume(self)
        key = (self.current_account, self.region, token)
        request = tuple(self._get_param(name) for name in _CREATE_VOLUME_PARAMS) + (tuple(sorted(self._parse_tag_specification().get("volume", {}).items())),)
        if key in made_by_token:
            volume, first = made_by_token[key]
            if first != request:
                raise EC2ClientError("IdempotentParameterMismatch",
                                     f"The client token {token} was used with other parameters by an earlier CreateVolume.")
            if self.ec2_backend.volumes.get(volume.id) is not volume:
                volume.deleted_for_token = True  # gone from the account: the original answer, as it stands now
            return ActionResult(volume)
        result = original_create_volume(self)
        made_by_token[key] = (result.result, request)
        return result

    ElasticBlockStore.create_volume = create_volume

    AmisResponse.describe_image_references = _describe_image_references


IMAGE_REFERENCE_TYPES = ("ec2:Instance", "ec2:LaunchTemplate", "ssm:Parameter", "imagebuilder:ImageRecipe", "imagebuilder:ContainerRecipe")
MAX_IMAGE_REFERENCE_IDS = 10  # DescribeImageReferences ImageId.N
DEFAULT_VERSION_DEPTH = 10


def _describe_image_references(self: Any) -> Any:
    """Which of the account's instances, launch templates and parameters name the AMIs."""
    from moto.core.responses import ActionResult
    from moto.ec2.exceptions import EC2ClientError
    from moto.ssm.models import ssm_backends

    ami_ids = list(self._get_param("ImageIds") or [])
    include_all = str(self._get_param("IncludeAllResourceTypes", False)).lower() == "true"
    asked = self._get_param("ResourceTypes") or []
    self.error_on_dryrun()
    if not ami_ids or len(ami_ids) > MAX_IMAGE_REFERENCE_IDS:
        raise EC2ClientError("InvalidParameterValue", f"ImageId: give 1 to {MAX_IMAGE_REFERENCE_IDS} image ids, not {len(ami_ids)}")
    if not include_all and not asked:
        raise EC2ClientError("MissingParameter", "Either IncludeAllResourceTypes or ResourceTypes must be specified.")
    options: dict[str, dict[str, list[str]]] = {kind: {} for kind in IMAGE_REFERENCE_TYPES} if include_all else {}
    for item in asked:
        kind = item.get("ResourceType", "")
        if kind not in IMAGE_REFERENCE_TYPES:
            raise EC2ClientError("InvalidParameterValue", f"ResourceType {kind!r}: one of {', '.join(IMAGE_REFERENCE_TYPES)}")
        chosen = options.setdefault(kind, {})
        for opt in item.get("ResourceTypeOptions") or item.get("ResourceTypeOption") or []:
            chosen[opt.get("OptionName", "")] = [str(v) for v in (opt.get("OptionValues") or opt.get("OptionValue") or [])]
    wanted = set(ami_ids)
    account, region = self.current_account, self.region
    found: list[dict[str, str]] = []
    if "ec2:Instance" in options:
        states = set(options["ec2:Instance"].get("state-name") or [])
        for instance in self.ec2_backend.all_instances():
            if instance.image_id in wanted and (not states or instance.state in states):
                found.append({"ImageId": instance.image_id, "ResourceType": "ec2:Instance",
                              "Arn": f"arn:aws:ec2:{region}:{account}:instance/{instance.id}"})
    if "ec2:LaunchTemplate" in options:
        depth = int((options["ec2:LaunchTemplate"].get("version-depth") or [DEFAULT_VERSION_DEPTH])[0])
        for template in self.ec2_backend.launch_templates.values():
            newest = sorted(template.versions, key=lambda v: v.number, reverse=True)[:depth]
            for ami in sorted({v.data.get("ImageId") for v in newest} & wanted):
                found.append({"ImageId": ami, "ResourceType": "ec2:LaunchTemplate",
                              "Arn": f"arn:aws:ec2:{region}:{account}:launch-template/{template.id}"})
    if "ssm:Parameter" in options:
        parameters = ssm_backends[account][region]._parameters
        for name in list(parameters):
            versions = parameters.get(name) or []
            if versions and versions[-1].value in wanted:
                found.append({"ImageId": versions[-1].value, "ResourceType": "ssm:Parameter",
                              "Arn": f"arn:aws:ssm:{region}:{account}:parameter/{name.lstrip('/')}"})
    return ActionResult({"ImageReferences": found})


def _drop_tree(ami_id: str) -> None:
    """The AMI's file tree goes with it (factory.local.builder.ami_trees): what a local instance boots."""
    import os

    where = os.environ.get(ENV_AMI_TREES)
    if where:
        from pathlib import Path

        from factory.local.builder.ami_trees import AmiTrees

        AmiTrees(Path(where)).drop(ami_id)


def _deprecated_images_hidden(amis_response: Any) -> None:
    """DescribeImages leaves out another owner's deprecated AMIs unless IncludeDeprecated
    is true (the table above); `DeprecationTime` is in the answer (moto's Ami carries the
    attribute `deprecation_time` only when the local cloud set it)."""
    from datetime import UTC, datetime

    original = amis_response.describe_images

    def describe_images(self: Any) -> Any:
        result = original(self)
        include = str(self._get_param("IncludeDeprecated", "false")).lower() == "true"
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")
        account = self.current_account

        def shown(image: Any) -> bool:
            when = getattr(image, "deprecation_time", None)
            return include or not when or when[:19] > now or getattr(image, "owner_id", None) == account

        images = result.result.get("Images") if isinstance(getattr(result, "result", None), dict) else None
        if images is not None:
            result.result["Images"] = [i for i in images if shown(i)]
        return result

    amis_response.describe_images = describe_images
