"""Each region's KMS key, looked at before anything is copied: it must be there, be a
customer-managed key (AWS cannot share what the AWS-managed `aws/ebs` key encrypts:
EC2 User Guide, "Share an AMI with specific AWS accounts", Considerations) and be enabled.
KMS's DescribeKey answers `KeyManager` (AWS | CUSTOMER), `KeyState` and the key's `Arn`
(botocore's KMS model, `KeyMetadata`); CopyImage is given the ARN."""

from __future__ import annotations

from typing import Any

from factory.errors import FactoryError


def key_arns(clients_for: Any, keys: dict[str, str], sharing: bool, where: str) -> dict[str, str]:
    """region -> the key's ARN, for every (region, key) of `keys`; a FactoryError naming the
    field and the fix for a key that is missing, AWS-managed (when `sharing`) or not enabled."""
    from factory.aws import aws_errors, error_code

    arns: dict[str, str] = {}
    problems: list[str] = []
    for region, key in sorted(keys.items()):
        kms = clients_for(region).client("kms")
        try:
            with aws_errors(f"reading KMS key {key} in {region}"):
                meta = kms.describe_key(KeyId=key)["KeyMetadata"]  # one key: one answer
        except FactoryError as exc:
            if "NotFound" in exc.message or error_code(exc) == "NotFoundException":
                problems.append(f"{where}: distribute.kms_keys.{region}: {key} is not a KMS key in {region}: create it there "
                                "(or a replica of a multi-Region key) and name it here")
                continue
            raise
        if meta.get("KeyManager") == "AWS" and sharing:
            problems.append(f"{where}: distribute.kms_keys.{region}: {key} is an AWS-managed key: AWS cannot share AMIs it "
                            "encrypts nor copy them to another account; name a customer-managed key")
        elif meta.get("KeyState", "Enabled") != "Enabled":
            problems.append(f"{where}: distribute.kms_keys.{region}: {key} is {meta.get('KeyState')}, not Enabled: enable it "
                            "(aws kms enable-key) or name another")
        else:
            arns[region] = meta["Arn"]
    if problems:
        raise FactoryError("\n".join(problems))
    return arns
