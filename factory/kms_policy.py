"""IAM and key-policy statements for a customer-managed KMS key that encrypts factory's EBS.

Two keys may matter (docs/register.md, "IAM for real AWS"):

- `builder.kms_key`: Packer's encrypted copy of the AMI (CopyImage with KmsKeyId). EC2
  uses the key as the caller, so the bake policy needs `kms:` actions on it.
- the account's default EBS key, when it is customer managed: the grow agent's volumes
  (CreateVolume `Encrypted`, no key named) are encrypted with it as the instance role.

Either key also encrypts what Batch launches (the AMI's snapshots, the launch template's
encrypted data volume): EC2 Auto Scaling, EC2 Fleet and Spot Fleet launch Batch's
instances through their service-linked roles, so the key's own policy must let those
roles use it (EC2 Auto Scaling User Guide, "Required AWS KMS key policy for use with
encrypted volumes"). An identity policy cannot grant that: `key_policy_statements` is
what to add to the key's policy.

AWS sources: EC2 User Guide, "How Amazon EBS encryption works" (the actions EBS calls:
CreateGrant, GenerateDataKeyWithoutPlaintext, Decrypt, DescribeKey, ReEncrypt*); AWS KMS
Developer Guide, condition keys `kms:ViaService` and `kms:GrantIsForAWSResource`. The
local cloud does not evaluate IAM or key policies: these are documented, not proven.
"""

from __future__ import annotations

import re
from typing import Any

_KEY_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):key/(?P<id>[\w-]+)")
_ALIAS_ARN = re.compile(r"arn:(?P<partition>aws[a-z-]*):kms:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):(?P<alias>alias/.+)")

# EBS uses the key through these, as the caller (or the instance role).
USE_ACTIONS = ["kms:Decrypt", "kms:DescribeKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:ReEncryptFrom", "kms:ReEncryptTo"]

# The service-linked roles that launch Batch's instances (and so read the AMI's snapshots
# and create the launch template's encrypted volumes).
LAUNCHING_ROLES = (
    "aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling",
    "aws-service-role/ec2fleet.amazonaws.com/AWSServiceRoleForEC2Fleet",
    "aws-service-role/spotfleet.amazonaws.com/AWSServiceRoleForEC2SpotFleet",
)


def key_scope(key: str) -> tuple[list[str], dict[str, Any]]:
    """The Resource and extra Condition that name `key` (a key id, key ARN, alias/NAME or
    alias ARN) in an identity policy. An alias is matched with `kms:ResourceAliases`
    (an identity policy's Resource must be the key's ARN, which an alias does not give)."""
    m = _KEY_ARN.fullmatch(key)
    if m:
        return [key], {}
    m = _ALIAS_ARN.fullmatch(key)
    alias = m["alias"] if m else key if key.startswith("alias/") else None
    if alias:
        return ["arn:aws:kms:*:*:key/*"], {"ForAnyValue:StringEquals": {"kms:ResourceAliases": alias}}
    return [f"arn:aws:kms:*:*:key/{key}"], {}


def use_statements(key: str, sid: str) -> list[dict[str, Any]]:
    """What the principal EBS acts for (the caller of CopyImage, or the instance role of
    CreateVolume) needs on `key`: the key used only through EC2 (`kms:ViaService`), and
    grants only for AWS resources (`kms:GrantIsForAWSResource`, the volume's grant)."""
    resources, alias = key_scope(key)
    via_ec2 = {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}
    return [
        {"Sid": f"{sid}Use", "Effect": "Allow", "Action": list(USE_ACTIONS), "Resource": resources, "Condition": {**via_ec2, **alias}},
        {"Sid": f"{sid}Grant", "Effect": "Allow", "Action": ["kms:CreateGrant"], "Resource": resources,
         "Condition": {**via_ec2, **alias, "Bool": {"kms:GrantIsForAWSResource": "true"}}},
    ]


def key_policy_statements(key: str) -> list[dict[str, Any]]:
    """Statements to add to `key`'s own key policy so Batch's instances can launch from
    what it encrypts. The account comes from a key ARN; otherwise ACCOUNT_ID is left for
    the user to fill in. In a key policy, Resource `*` means this key."""
    m = _KEY_ARN.fullmatch(key) or _ALIAS_ARN.fullmatch(key)
    account, partition = (m["account"], m["partition"]) if m else ("ACCOUNT_ID", "aws")
    principals = [f"arn:{partition}:iam::{account}:role/{role}" for role in LAUNCHING_ROLES]
    return [
        {"Sid": "FactoryBatchLaunchersUseTheKey", "Effect": "Allow", "Principal": {"AWS": principals},
         "Action": ["kms:Encrypt", "kms:Decrypt", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:DescribeKey"], "Resource": "*"},
        {"Sid": "FactoryBatchLaunchersGrantForVolumes", "Effect": "Allow", "Principal": {"AWS": principals},
         "Action": ["kms:CreateGrant"], "Resource": "*", "Condition": {"Bool": {"kms:GrantIsForAWSResource": "true"}}},
    ]
