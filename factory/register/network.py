"""Where a tier's instances run and with which roles: subnets, security groups, IAM."""

from __future__ import annotations

from botocore.exceptions import ClientError

from factory.aws import Clients, aws_errors, error_code
from factory.config import FactoryConfig
from factory.errors import FactoryError
from factory.register.reads import paged
from factory.register.results import Network

SERVICE_LINKED_ROLE_PATH = ":role/aws-service-role/batch.amazonaws.com/"


def resolve_network(clients: Clients, region: str, config: FactoryConfig) -> Network:
    """Subnets and security groups: from the config file, else the region's default VPC."""
    if config.batch.has_network:
        return Network(region, f"config {config.source}", config.batch.subnets, config.batch.security_groups)
    ec2 = clients.ec2()
    with aws_errors(f"looking up the default VPC in {region}"):
        vpcs = list(paged(ec2, "describe_vpcs", "Vpcs", Filters=[{"Name": "isDefault", "Values": ["true"]}]))
        if not vpcs:
            raise FactoryError(
                f"{region} has no default VPC, and {config.source} gives no batch.subnets: "
                "add `batch: {subnets: [subnet-...], security_groups: [sg-...]}` to factory.yaml "
                "(or pass --config FILE); see docs/register.md, 'Config file'"
            )
        vpc = vpcs[0]["VpcId"]
        subnets = list(paged(ec2, "describe_subnets", "Subnets", Filters=[{"Name": "vpc-id", "Values": [vpc]}]))
        groups = list(paged(
            ec2, "describe_security_groups", "SecurityGroups",
            Filters=[{"Name": "vpc-id", "Values": [vpc]}, {"Name": "group-name", "Values": ["default"]}],
        ))
    if not subnets or not groups:
        raise FactoryError(
            f"the default VPC {vpc} in {region} has no subnets or no `default` security group: "
            "name them in factory.yaml under batch.subnets / batch.security_groups"
        )
    return Network(
        region,
        f"default VPC {vpc} ({region})",
        tuple(sorted(s["SubnetId"] for s in subnets)),
        tuple(sorted(g["GroupId"] for g in groups)),
    )


def resolve_role(clients: Clients, value: str | None, kind: str, setting: str) -> str | None:
    """A role or instance profile name -> its ARN (ARNs pass through)."""
    if value is None or value.startswith("arn:"):
        return value
    iam = clients.client("iam")
    with aws_errors(f"looking up the {kind} {value}"):
        try:
            if kind == "instance profile":
                return iam.get_instance_profile(InstanceProfileName=value)["InstanceProfile"]["Arn"]
            return iam.get_role(RoleName=value)["Role"]["Arn"]
        except ClientError as exc:
            if error_code(exc) != "NoSuchEntity":
                raise
    hint = (
        "create it (AWS Batch's 'ecsInstanceRole' with the AmazonEC2ContainerServiceforEC2Role policy)"
        if kind == "instance profile"
        else "create it, or remove the setting to use Batch's service-linked role"
    )
    raise FactoryError(f"the {kind} {value!r} ({setting} in factory.yaml) does not exist: {hint}, or set {setting} to an existing name/ARN")


def is_service_linked(role: str | None) -> bool:
    """No role (Batch then uses its service-linked role) or that role's ARN."""
    return role is None or SERVICE_LINKED_ROLE_PATH in role
