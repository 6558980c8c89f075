"""What the policies `factory iam-policy` prints really allow (issue 22 §3, §4): no scoping
that another statement makes dead, every wide grant named with its reason, and the
builder's options (instance profile, Session Manager, KMS key) fitted from factory.yaml.
The IAM proof against recorded calls is tests/test_zz_iam_policy.py."""

from __future__ import annotations

import json
import shutil

import pytest

from factory import iam
from factory.config import BuilderConfig

KEY_ARN = "arn:aws:kms:eu-west-2:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"
FULL_BUILDER = BuilderConfig(subnet="subnet-0123456789abcdef0", ssh_interface="session_manager", public_ip=False,
                             instance_profile="factory-builder", kms_key=KEY_ARN)
BUILDERS = {"suite's": None, "every option": FULL_BUILDER, "defaults": BuilderConfig()}


def as_list(value) -> list[str]:
    return [value] if isinstance(value, str) else list(value)


def mutating(action: str) -> bool:
    return not action.split(":", 1)[1].startswith(("Describe", "Get", "List"))


@pytest.mark.parametrize("builder", BUILDERS.values(), ids=BUILDERS.keys())
@pytest.mark.parametrize("purpose", iam.PURPOSES)
def test_no_scoped_statement_is_dead(purpose, builder):
    """A statement scoped by tag (or resource) allows nothing when another statement of the
    same policy grants the same action on `*` with no condition."""
    statements = iam.policy(purpose, builder)["Statement"]
    everywhere = {a for s in statements if s["Resource"] == ["*"] and "Condition" not in s for a in s["Action"]}
    dead = {s["Sid"]: sorted(set(s["Action"]) & everywhere) for s in statements
            if (s["Resource"] != ["*"] or "Condition" in s) and set(s["Action"]) & everywhere}
    assert not dead, f"{purpose}: scoped statements another statement grants on * anyway: {dead}"


@pytest.mark.parametrize("purpose", iam.PURPOSES)
def test_every_wide_grant_is_named_with_its_reason(purpose):
    """Each action that changes something and is granted on `*` with no condition is in
    iam.WIDE with why; and WIDE claims nothing the policy does not grant so."""
    statements = iam.policy(purpose)["Statement"]
    wide = {a for s in statements if s["Resource"] in (["*"], iam.ANY_ROLE) and "Condition" not in s for a in s["Action"] if mutating(a)}
    assert wide == set(iam.WIDE.get(purpose, {})), purpose
    assert all(len(why) > 20 for why in iam.WIDE.get(purpose, {}).values())


def test_builders_are_stopped_and_terminated_only_by_their_tag():
    by_sid = {s["Sid"]: s for s in iam.policy("bake")["Statement"]}
    stop = by_sid["StopAndTerminateBuilders"]
    assert stop["Action"] == ["ec2:StopInstances", "ec2:TerminateInstances"]
    assert stop["Resource"] == ["arn:aws:ec2:*:*:instance/*"] and stop["Condition"] == {"Null": {"aws:ResourceTag/factory:image-hash": "false"}}
    assert "DiscardUntaggedImage" not in by_sid  # it named a tag an untagged AMI cannot have


def test_the_builder_section_fits_the_bake_policy():
    suite = iam.actions("bake")
    full = iam.policy("bake", FULL_BUILDER)["Statement"]
    by_sid = {s["Sid"]: s for s in full}
    # the named instance profile only (Packer's GetInstanceProfile before launch)
    assert by_sid["ReadBuilderProfile"]["Resource"] == ["arn:aws:iam::*:instance-profile/factory-builder"]
    assert "iam:GetInstanceProfile" in suite and "iam:GetInstanceProfile" not in iam.actions("bake", BuilderConfig())
    # Session Manager: only with ssh_interface session_manager, and not in what the suite proves
    session = {"ssm:StartSession", "ssm:TerminateSession", "ec2:DescribeInstanceStatus"}
    assert session <= {a for s in full for a in s["Action"]} and not session & suite
    assert by_sid["SessionManagerToBuilders"]["Condition"] == {"Null": {"ssm:resourceTag/factory:image-hash": "false"}}
    assert by_sid["SessionManagerEndOwnSessions"]["Resource"] == ["arn:aws:ssm:*:*:session/${aws:userid}-*"]
    # the KMS key: used only through EC2, grants only for AWS resources, on that key only
    use, grant = by_sid["BuilderKmsKeyUse"], by_sid["BuilderKmsKeyGrant"]
    assert use["Resource"] == grant["Resource"] == [KEY_ARN]
    assert use["Condition"] == {"StringLike": {"kms:ViaService": "ec2.*.amazonaws.com"}}
    assert grant["Action"] == ["kms:CreateGrant"] and grant["Condition"]["Bool"] == {"kms:GrantIsForAWSResource": "true"}
    assert not any(a.startswith("kms:") for a in suite)


def test_a_kms_alias_is_matched_by_resource_alias():
    from factory.kms_policy import key_scope

    assert key_scope("alias/factory-ebs") == (["arn:aws:kms:*:*:key/*"], {"ForAnyValue:StringEquals": {"kms:ResourceAliases": "alias/factory-ebs"}})
    assert key_scope("1234abcd-12ab-34cd-56ef-1234567890ab") == (["arn:aws:kms:*:*:key/1234abcd-12ab-34cd-56ef-1234567890ab"], {})


def test_the_policies_are_valid_iam_grammar(moto):
    """moto's IAM checks a policy document's grammar as CreatePolicy does."""
    import boto3

    from factory.grow import instance_policy
    from factory.kms_policy import use_statements

    client = boto3.client("iam", region_name="us-east-1", endpoint_url=moto.endpoint, aws_access_key_id="testing", aws_secret_access_key="testing")
    docs = {f"factory-{p}-{name.replace(' ', '-').strip('s')}": iam.policy(p, b) for p in iam.PURPOSES for name, b in BUILDERS.items()}
    grow = instance_policy()
    docs["factory-grow-kms"] = dict(grow, Statement=grow["Statement"] + use_statements("alias/ebs-default", "FactoryGrowEbsKmsKey"))
    for name, doc in docs.items():
        client.create_policy(PolicyName=name.replace("'", ""), PolicyDocument=json.dumps(doc))


def test_the_cli_prints_what_the_config_needs(cli, tmp_path):
    config = tmp_path / "factory.yaml"
    config.write_text(f"builder:\n  subnet: subnet-0123456789abcdef0\n  ssh_interface: session_manager\n  instance_profile: factory-builder\n  kms_key: {KEY_ARN}\n")
    doc = json.loads(cli("iam-policy", "--for", "bake", "--config", config, "--json").stdout)
    assert doc == iam.policy("bake", FULL_BUILDER.__class__(ssh_interface="session_manager", instance_profile="factory-builder", kms_key=KEY_ARN))
    text = cli("iam-policy", "--for", "bake", "--config", config).stdout
    assert "ssm:StartSession" in text and "--for key-policy" in text
    assert "on every resource (`*`), and why" in text and "ec2:DeregisterImage: Packer's temporary unencrypted AMI" in text

    keys = json.loads(cli("iam-policy", "--for", "key-policy", "--config", config, "--ebs-kms-key", "alias/ebs-default", "--json").stdout)
    assert set(keys) == {KEY_ARN, "alias/ebs-default"}
    principals = keys[KEY_ARN][0]["Principal"]["AWS"]
    assert "arn:aws:iam::111122223333:role/aws-service-role/autoscaling.amazonaws.com/AWSServiceRoleForAutoScaling" in principals
    assert all(":ACCOUNT_ID:" in p for p in keys["alias/ebs-default"][0]["Principal"]["AWS"])  # an alias gives no account
    assert keys[KEY_ARN][1]["Condition"] == {"Bool": {"kms:GrantIsForAWSResource": "true"}}

    none = cli("iam-policy", "--for", "key-policy", "--config", tmp_path / "none.yaml")
    assert none.exit_code == 2 and "not found" in none.stderr
    (tmp_path / "plain.yaml").write_text("prune:\n  keep: 2\n")
    missing = cli("iam-policy", "--for", "key-policy", "--config", tmp_path / "plain.yaml")
    assert missing.exit_code == 2 and "builder.kms_key" in missing.stderr and "Traceback" not in missing.stderr

    grow = json.loads(cli("iam-policy", "--for", "instance", "--ebs-kms-key", KEY_ARN, "--json").stdout)
    sids = [s["Sid"] for s in grow["Statement"]]
    assert "FactoryGrowEbsKmsKeyUse" in sids and "FactoryGrowEbsKmsKeyGrant" in sids
    assert "--ebs-kms-key" in cli("iam-policy", "--for", "instance").stdout


ROLE_A = "arn:aws:iam::444455556666:role/factory-distribute"
ROLE_B = "arn:aws:iam::777788889999:role/factory-copies"


def assume_resources(doc) -> list[str] | None:
    found = [s["Resource"] for s in doc["Statement"] if "sts:AssumeRole" in s["Action"]]
    assert len(found) <= 1
    return found[0] if found else None


def test_assume_role_is_narrowed_to_the_copy_to_roles():
    """Without the settings any role may be assumed (and WIDE says so); with them exactly
    the roles copy_to names, and none at all when it names none."""
    assert assume_resources(iam.policy("distribute")) == iam.ANY_ROLE
    assert "sts:AssumeRole" in iam.wide("distribute")
    assert assume_resources(iam.policy("distribute", None, [ROLE_B, ROLE_A, ROLE_A])) == [ROLE_A, ROLE_B]
    assert "sts:AssumeRole" not in iam.wide("distribute", [ROLE_A])
    assert assume_resources(iam.policy("distribute", None, [])) is None
    assert "sts:AssumeRole" not in iam.actions("distribute", None, [])


def test_the_cli_names_exactly_the_roles_of_factory_yaml_and_the_specs(cli, tmp_path):
    from tests.conftest import SPECS

    config = tmp_path / "factory.yaml"
    config.write_text(f'builder: {{kms_key: alias/factory-ami}}\ndistribute:\n  copy_to:\n    - {{account: "444455556666", role: "{ROLE_A}"}}\n')
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "salmon-quant.yaml").write_text((SPECS / "salmon-quant.yaml").read_text())
    shutil.copytree(SPECS / "benchmarks", specs / "benchmarks")
    doc = json.loads(cli("iam-policy", "--for", "distribute", "--config", config, "--specs-dir", specs, "--json").stdout)
    assert assume_resources(doc) == [ROLE_A]
    # a spec's own copy_to adds its roles
    (specs / "salmon-quant.yaml").write_text((SPECS / "salmon-quant.yaml").read_text()
                                              + f'distribute:\n  copy_to:\n    - {{account: "777788889999", role: "{ROLE_B}"}}\n')
    doc = json.loads(cli("iam-policy", "--for", "distribute", "--config", config, "--specs-dir", specs, "--json").stdout)
    assert assume_resources(doc) == [ROLE_A, ROLE_B]
    text = cli("iam-policy", "--for", "distribute", "--config", config, "--specs-dir", specs).stdout
    assert ROLE_B in text and "sts:AssumeRole: without factory.yaml" not in text
    # a settings file without copy_to: nothing to assume
    (tmp_path / "plain.yaml").write_text("prune:\n  keep: 2\n")
    doc = json.loads(cli("iam-policy", "--for", "distribute", "--config", tmp_path / "plain.yaml", "--specs-dir", tmp_path / "none", "--json").stdout)
    assert assume_resources(doc) is None
    # no settings file: any role, and the text says what is wide and why
    wide = cli("iam-policy", "--for", "distribute", "--specs-dir", tmp_path / "none")
    assert "sts:AssumeRole: without factory.yaml" in wide.stdout and '"arn:aws:iam::*:role/*"' in wide.stdout
