"""`distribute:` in factory.yaml and in a spec (factory.distribution): parsed, overlaid and
refused before any instance starts when AWS would refuse it after the bake. Pure: no cloud."""

from __future__ import annotations

from pathlib import Path

import pytest

from factory.config import ConfigError, parse_config
from factory.distribution import CopyTarget, Distribution, overlay, parse, partition
from factory.spec import check_file, load_spec
from tests.conftest import SPECS

ORG = "arn:aws:organizations::111122223333:organization/o-abc123def4"
OU = "arn:aws:organizations::111122223333:ou/o-abc123def4/ou-ab12-cd34ef56"
ROLE = "arn:aws:iam::444455556666:role/factory-distribute"
GOOD = {
    "regions": ["us-west-2", "eu-west-1"],
    "kms_keys": {"us-east-1": "alias/factory-ami", "us-west-2": "alias/factory-ami", "eu-west-1": "alias/factory-ami"},
    "share_with": ["111122223333", ORG, OU],
    "copy_to": [{"account": "444455556666", "role": ROLE, "register": True}],
}


def config(dist, kms_key="alias/factory-ami", path=Path("/etc/factory.yaml")):
    return parse_config({"builder": {"kms_key": kms_key}, "distribute": dist}, path)


def spec(tmp_path: Path, extra: str = "") -> object:
    text = (SPECS / "salmon-quant.yaml").read_text() + extra
    path = tmp_path / "salmon-quant.yaml"
    path.write_text(text)
    (tmp_path / "benchmarks").symlink_to(SPECS / "benchmarks")
    return path


def problems(dist, home="us-east-1", kms_key="alias/factory-ami") -> str:
    cfg = config(dist, kms_key)
    fake = type("Spec", (), {"region": home, "path": Path("/specs/t.yaml"), "distribute": None})()
    with pytest.raises(ConfigError) as err:
        cfg.distribution_for(fake)
    return err.value.message


def test_the_issue_shape_parses_and_checks():
    cfg = config(GOOD)
    d = cfg.distribution_for(type("Spec", (), {"region": "us-east-1", "path": Path("/s.yaml"), "distribute": None})())
    assert d.targets("us-east-1") == ("us-west-2", "eu-west-1")
    assert d.accounts == ("111122223333",) and d.organizations == (ORG,) and d.units == (OU,)
    assert d.copy_to == (CopyTarget("444455556666", ROLE, True),)
    assert d.key("eu-west-1") == "alias/factory-ami"


def test_no_distribute_is_nothing_to_do():
    cfg = parse_config({}, None)
    d = cfg.distribution_for(type("Spec", (), {"region": "us-east-1", "path": Path("/s.yaml"), "distribute": None})())
    assert d.empty and d.targets("us-east-1") == ()


@pytest.mark.parametrize("dist, field, says", [
    ({"share_with": ["all"]}, "distribute.share_with[0]", "public"),
    ({"share_with": ["11112222333"]}, "distribute.share_with[0]", "12 digits"),
    ({"share_with": ["1111-2222-3333"]}, "distribute.share_with[0]", "12 digits"),
    ({"share_with": ["arn:aws:organizations::111122223333:organization/abc"]}, "distribute.share_with[0]", "organization ARN"),
    ({"share_with": ["arn:aws:organizations::111122223333:ou/o-abc123def4/x"]}, "distribute.share_with[0]", "organizational unit ARN"),
    ({"share_with": ["bob"]}, "distribute.share_with[0]", "neither"),
    ({"regions": ["mars-1"]}, "distribute.regions[0]", "not an AWS region"),
    ({"kms_keys": {"us-west-2": "my key"}}, "distribute.kms_keys.us-west-2", "not a KMS key"),
    ({"kms_keys": {"us-west-2": "arn:aws:kms:eu-west-1:111122223333:key/1234abcd-12ab-34cd-56ef-1234567890ab"}},
     "distribute.kms_keys.us-west-2", "regional"),
    ({"copy_to": [{"account": "4444", "role": ROLE}]}, "distribute.copy_to[0].account", "12 digits"),
    ({"copy_to": [{"account": "444455556666", "role": "factory-distribute"}]}, "distribute.copy_to[0].role", "not an IAM role ARN"),
    ({"copy_to": [{"account": "444455556666", "role": "arn:aws:iam::111122223333:role/x"}]}, "distribute.copy_to[0].role", "not 444455556666"),
    ({"copy_to": [{"account": "444455556666", "role": ROLE, "color": "red"}]}, "distribute.copy_to[0].color", "unknown setting"),
    ({"everywhere": True}, "distribute.everywhere", "unknown setting"),
])
def test_bad_fields_name_the_file_the_field_and_the_fix(dist, field, says):
    with pytest.raises(ConfigError) as err:
        config(dist)
    assert f"/etc/factory.yaml: {field}: " in err.value.message and says in err.value.message


def test_a_target_region_without_a_key_is_refused():
    message = problems({"regions": ["us-west-2"], "kms_keys": {}})
    assert "distribute.kms_keys: no key for us-west-2" in message and "customer-managed" in message


def test_sharing_with_the_aws_managed_key_is_refused():
    message = problems({"regions": ["us-west-2"], "kms_keys": {"us-west-2": "alias/aws/ebs"}, "share_with": ["111122223333"]})
    assert "distribute.kms_keys.us-west-2: alias/aws/ebs is the AWS-managed key" in message


def test_sharing_what_the_account_default_key_encrypts_is_refused():
    message = problems({"share_with": ["111122223333"]}, kms_key=None)
    assert "distribute.share_with" in message and "builder.kms_key" in message


def test_a_home_key_other_than_the_bakes_is_refused():
    message = problems({"kms_keys": {"us-east-1": "alias/other"}, "share_with": ["111122223333"]})
    assert "alias/other is not the key the bake in us-east-1 encrypts with" in message


def test_copying_across_partitions_is_refused():
    message = problems({"regions": ["cn-north-1", "us-gov-west-1"], "kms_keys": {"cn-north-1": "alias/k", "us-gov-west-1": "alias/k"}})
    assert "cn-north-1 is in partition aws-cn" in message and "us-gov-west-1 is in partition aws-us-gov" in message
    assert "CopyImage does not cross partitions" in message
    role = "arn:aws-cn:iam::444455556666:role/r"
    assert "partition aws-cn" in problems({"copy_to": [{"account": "444455556666", "role": role}]})
    assert partition("eu-west-1") == "aws"


def test_a_spec_replaces_the_fields_it_names(tmp_path):
    path = spec(tmp_path, "distribute:\n  regions: [eu-west-1]\n  kms_keys: {eu-west-1: alias/eu}\n")
    s = load_spec(path)
    d = config(GOOD).distribution_for(s)
    assert d.regions == ("eu-west-1",) and dict(d.kms_keys) == {"eu-west-1": "alias/eu"}
    assert d.share_with == tuple(GOOD["share_with"])  # not named by the spec: factory.yaml's
    assert s.spec_hash == load_spec(SPECS / "salmon-quant.yaml").spec_hash  # where it goes does not shape the image


def test_a_spec_problem_names_the_spec(tmp_path):
    path = spec(tmp_path, "distribute:\n  regions: [ap-south-1]\n  share_with: [all]\n  where: 1\n")
    fields = {p.field: p.message for p in check_file(path).problems}
    assert "public" in fields["distribute.share_with[0]"] and "unknown key" in fields["distribute.where"]
    path.write_text(path.read_text().replace("  share_with: [all]\n  where: 1\n", ""))
    with pytest.raises(ConfigError) as err:
        config(GOOD).distribution_for(load_spec(path))
    # kms_keys is factory.yaml's field, so the missing key is named there
    assert "/etc/factory.yaml: distribute.kms_keys: no key for ap-south-1" in err.value.message
    path.write_text(path.read_text() + "  kms_keys: {ap-south-1: alias/aws/ebs}\n")
    with pytest.raises(ConfigError) as err:
        config(GOOD).distribution_for(load_spec(path))
    assert f"{path}: distribute.kms_keys.ap-south-1: alias/aws/ebs is the AWS-managed key" in err.value.message


def test_overlay_keeps_the_base_without_an_override():
    base = parse(GOOD, lambda *a: pytest.fail(str(a)))
    assert overlay(base, None) is base
    assert Distribution().empty


NET = {"subnets": ["subnet-0abc12345"], "security_groups": ["sg-0def67890"]}


def test_a_network_per_target_region_and_per_account():
    dist = dict(GOOD, networks={"us-west-2": NET},
                copy_to=[{"account": "444455556666", "role": ROLE, "register": True, "networks": {"us-east-1": NET, "eu-west-1": NET}}])
    d = config(dist).distribution_for(type("Spec", (), {"region": "us-east-1", "path": Path("/s.yaml"), "distribute": None})())
    assert d.network("us-west-2") == (("subnet-0abc12345",), ("sg-0def67890",)) and d.network("eu-west-1") is None
    assert d.network("us-east-1", "444455556666") == d.network("us-west-2") and d.network("us-west-2", "444455556666") is None
    assert d.to_json()["networks"] == {"us-west-2": NET}


def test_bad_networks_are_refused_with_the_field_and_the_fix():
    with pytest.raises(ConfigError) as err:  # the file's shape: when it is read
        config(dict(GOOD, networks={"eu-west-1": {"subnets": ["subnet-0abc12345"]},
                                    "us-west-2": {"subnets": ["vpc-123"], "security_groups": ["sg-0def67890"], "vpc": "x"}}))
    text = err.value.message
    assert "/etc/factory.yaml: distribute.networks.eu-west-1: give both subnets and security_groups for eu-west-1" in text
    assert "distribute.networks.us-west-2.subnets[0]: 'vpc-123' is not a subnet-... id" in text
    assert "distribute.networks.us-west-2.vpc: unknown setting" in text
    text = problems(dict(GOOD, networks={"us-east-1": NET, "ap-south-1": NET}))  # against the spec's regions: before any instance starts
    assert "/etc/factory.yaml: distribute.networks.us-east-1: us-east-1 is the image's own region, whose network is factory.yaml's batch.subnets" in text
    assert "distribute.networks.ap-south-1: the copies do not go to ap-south-1 (distribute.regions: us-west-2, eu-west-1)" in text
    text = problems(dict(GOOD, copy_to=[{"account": "444455556666", "role": ROLE, "networks": {"us-east-1": NET}},
                                        {"account": "777788889999", "role": "arn:aws:iam::777788889999:role/r", "register": True,
                                         "networks": {"ap-south-1": NET}}]))
    assert "distribute.copy_to[0].networks: account 444455556666 is only copied into (register: false)" in text
    assert "distribute.copy_to[1].networks.ap-south-1: account 777788889999 gets copies in us-east-1, us-west-2, eu-west-1 only" in text


def test_a_spec_names_its_own_networks(tmp_path):
    path = spec(tmp_path, "distribute:\n  networks:\n    eu-west-1: {subnets: [subnet-0abc12345], security_groups: [sg-0def67890]}\n")
    d = config(GOOD).distribution_for(load_spec(path))
    assert d.network("eu-west-1") == (("subnet-0abc12345",), ("sg-0def67890",))
