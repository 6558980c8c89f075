"""The tier's EC2 launch template: its content, and a new default version only when it changes.

A new version (made the default) only when the AMI, the volume, the metadata options or
the user data differ from the default version. A version left behind by an interrupted
run (latest matches, default does not) is made the default instead of adding another.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from botocore.exceptions import ClientError

from factory.aws import aws_errors, error_code
from factory.errors import FactoryError
from factory.register.names import TAG_MANAGED, tag_delta, tag_dict, version_description
from factory.register.results import Change
from factory.register.run import Run
from factory.register.targets import TierTarget

MIME_BOUNDARY = "==FACTORY-BOUNDARY=="


def mime_user_data(commands: Sequence[str]) -> str:
    """User data in the MIME multi-part form AWS Batch requires for launch templates."""
    script = "#!/bin/bash\nset -euo pipefail\n" + "".join(c.rstrip("\n") + "\n" for c in commands)
    return (
        f'Content-Type: multipart/mixed; boundary="{MIME_BOUNDARY}"\n'
        "MIME-Version: 1.0\n"
        "\n"
        f"--{MIME_BOUNDARY}\n"
        'Content-Type: text/x-shellscript; charset="us-ascii"\n'
        "\n"
        f"{script}"
        "\n"
        f"--{MIME_BOUNDARY}--\n"
    )


def launch_template_data(target: TierTarget, ami: str, boot_commands: Sequence[str] = ()) -> dict[str, Any]:
    """The launch template content for a tier: AMI, sized gp3 device, IMDSv2, user data."""
    data: dict[str, Any] = {
        "ImageId": ami,
        "BlockDeviceMappings": [
            {
                # AL1 boots from /dev/xvda and keeps Docker's thin pool on /dev/xvdcz: the
                # root stays as the AMI has it and the Docker device is sized.
                "DeviceName": target.family.sized_device,
                "Ebs": {
                    "VolumeSize": target.volume_gib,
                    "VolumeType": "gp3",
                    "Encrypted": True,
                    "DeleteOnTermination": True,
                },
            }
        ],
        # IMDSv2 only; hop limit 2 so containers on the bridge network still reach it.
        "MetadataOptions": {"HttpTokens": "required", "HttpEndpoint": "enabled", "HttpPutResponseHopLimit": 2},
    }
    if target.grow_volume is not None:
        # storage.grow: Docker gets its own data volume that the grow agent extends; the
        # root volume stays as the AMI has it. Instances and volumes carry the tags the
        # agent's IAM policy is scoped to.
        data["BlockDeviceMappings"] = [target.grow_volume]
        data["TagSpecifications"] = [dict(t) for t in target.grow_tags]
    if boot_commands:
        data["UserData"] = base64.b64encode(mime_user_data(boot_commands).encode()).decode()
    return data


def _comparable(data: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a launch template version factory decides; AWS adds others."""
    bdms = []
    for m in data.get("BlockDeviceMappings") or []:
        ebs = m.get("Ebs") or {}
        bdms.append(
            {
                "DeviceName": m.get("DeviceName"),
                "Ebs": {k: ebs.get(k) for k in ("VolumeSize", "VolumeType", "Encrypted", "DeleteOnTermination")},
            }
        )
    meta = data.get("MetadataOptions") or {}
    user_data = data.get("UserData")
    # Only the resource types factory sets at launch (moto also echoes the template's own
    # tags here, which AWS does not: a launch template's data cannot tag a launch template).
    tag_specs = sorted(
        (t.get("ResourceType"), tuple(sorted((x["Key"], x["Value"]) for x in t.get("Tags") or [])))
        for t in data.get("TagSpecifications") or []
        if t.get("ResourceType") in ("instance", "volume")
    )
    return {
        "TagSpecifications": tag_specs,
        "ImageId": data.get("ImageId"),
        "BlockDeviceMappings": sorted(bdms, key=lambda m: m["DeviceName"] or ""),
        "MetadataOptions": {k: meta.get(k) for k in ("HttpTokens", "HttpEndpoint", "HttpPutResponseHopLimit")},
        "UserData": base64.b64decode(user_data).decode(errors="replace") if user_data else None,
    }


def differences(have: Mapping[str, Any], want: Mapping[str, Any]) -> list[str]:
    a, b = _comparable(have), _comparable(want)
    out = []
    if a["ImageId"] != b["ImageId"]:
        out.append(f"AMI {a['ImageId']} -> {b['ImageId']}")
    if a["BlockDeviceMappings"] != b["BlockDeviceMappings"]:
        old = ", ".join(f"{m['DeviceName']} {m['Ebs']['VolumeSize']} GiB" for m in a["BlockDeviceMappings"]) or "none"
        new = ", ".join(f"{m['DeviceName']} {m['Ebs']['VolumeSize']} GiB" for m in b["BlockDeviceMappings"])
        same_size = [m["Ebs"]["VolumeSize"] for m in a["BlockDeviceMappings"]] == [m["Ebs"]["VolumeSize"] for m in b["BlockDeviceMappings"]]
        out.append(f"volume {old} -> {new}" + (" (type/encryption)" if same_size else ""))
    if a["MetadataOptions"] != b["MetadataOptions"]:
        out.append("metadata options (IMDSv2)")
    if a["UserData"] != b["UserData"]:
        out.append("user data")
    if a["TagSpecifications"] != b["TagSpecifications"]:
        out.append("instance and volume tags (storage.grow)")
    return out


def reconcile(run: Run, ec2: Any, target: TierTarget, data: dict[str, Any], changes: list[Change], reads: Any = None) -> dict[str, Any]:
    """Create the launch template or give it a new default version; returns {name, id, version}.
    `reads` (a RegionReads) answers from the region's one read of launch templates and of
    their default and latest versions."""
    name = target.name
    tags = target.tags
    if reads is not None:
        known = reads.launch_templates().get(name)
        lts = [known] if known else []
    else:
        with aws_errors(f"reading launch template {name}"):
            try:
                lts = ec2.describe_launch_templates(LaunchTemplateNames=[name])["LaunchTemplates"]  # one name, so one answer: no paging (MaxResults) needed
            except ClientError as exc:
                if "NotFound" not in error_code(exc):
                    raise
                lts = []
    if not lts:
        changes.append(Change("launch-template", name, "create", f"new: AMI {data['ImageId']}, {target.volume_gib} GiB gp3 encrypted, IMDSv2"))
        if run.dry_run:
            return {"name": name, "id": None, "version": 1}
        run.progress(f"creating launch template {name}")
        with aws_errors(f"creating launch template {name}"):
            lt = ec2.create_launch_template(
                LaunchTemplateName=name,
                VersionDescription=version_description(target.tasks),
                LaunchTemplateData=data,
                TagSpecifications=[{"ResourceType": "launch-template", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}],
            )["LaunchTemplate"]
        return {"name": name, "id": lt["LaunchTemplateId"], "version": int(lt["LatestVersionNumber"])}

    lt = lts[0]
    lt_id = lt["LaunchTemplateId"]
    have_tags = tag_dict(lt.get("Tags"))
    if have_tags.get(TAG_MANAGED) != "true":
        raise FactoryError(
            f"launch template {name} ({lt_id}) exists but is not managed by factory (no tag {TAG_MANAGED}=true): "
            "delete or rename it, or tag it to let factory manage it"
        )
    default_v, latest_v = int(lt["DefaultVersionNumber"]), int(lt["LatestVersionNumber"])
    if reads is not None:
        versions = [v for v in (reads.version(lt_id, n) for n in sorted({default_v, latest_v})) if v]
    else:
        with aws_errors(f"reading launch template {name} versions"):
            versions = ec2.describe_launch_template_versions(  # two versions by number: no paging (MaxResults) needed
                LaunchTemplateId=lt_id, Versions=sorted({str(default_v), str(latest_v)})
            )["LaunchTemplateVersions"]
    by_number = {int(v["VersionNumber"]): v["LaunchTemplateData"] for v in versions}
    diffs = differences(by_number.get(default_v, {}), data)
    version = default_v
    if not diffs:
        changes.append(Change("launch-template", name, "unchanged", f"version {default_v} is current"))
    elif latest_v != default_v and not differences(by_number.get(latest_v, {}), data):
        changes.append(Change("launch-template", name, "update", f"make version {latest_v} the default (left by an interrupted run): {'; '.join(diffs)}"))
        version = latest_v
        if not run.dry_run:
            with aws_errors(f"setting the default version of {name}"):
                ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion=str(latest_v))
    else:
        version = latest_v + 1
        changes.append(Change("launch-template", name, "update", f"new version {version} (default): {'; '.join(diffs)}"))
        if not run.dry_run:
            run.progress(f"adding version to launch template {name}")
            with aws_errors(f"adding a version to launch template {name}"):
                made = ec2.create_launch_template_version(
                    LaunchTemplateId=lt_id,
                    VersionDescription=version_description(target.tasks),
                    LaunchTemplateData=data,
                )["LaunchTemplateVersion"]
                version = int(made["VersionNumber"])
            with aws_errors(f"setting the default version of {name}"):
                ec2.modify_launch_template(LaunchTemplateId=lt_id, DefaultVersion=str(version))
    _sync_tags(run, ec2, name, lt_id, have_tags, tags, changes)
    return {"name": name, "id": lt_id, "version": version}


def _sync_tags(run: Run, ec2: Any, name: str, lt_id: str, have: dict[str, str], want: dict[str, str], changes: list[Change]) -> None:
    missing, stale, reason = tag_delta(have, want)
    if not missing and not stale:
        return
    changes.append(Change("launch-template", name, "update", reason))
    if run.dry_run:
        return
    with aws_errors(f"tagging launch template {name}"):
        if missing:
            ec2.create_tags(Resources=[lt_id], Tags=[{"Key": k, "Value": v} for k, v in missing.items()])
        if stale:
            ec2.delete_tags(Resources=[lt_id], Tags=[{"Key": k} for k in stale])
