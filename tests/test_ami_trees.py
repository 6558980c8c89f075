"""The local cloud keeps each bake's tree per AMI id and drops it with the AMI (factory.local.builder.ami_trees)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """moto's server told where the trees live (as `factory local up` tells it: its state folder)."""
    from factory.local.aws.moto_server import MotoServer

    state = tmp_path_factory.mktemp("ami-trees")
    server = MotoServer.start(log_path=state / "moto.log", ami_trees=state)
    yield server, state
    server.stop()


@pytest.fixture
def server_and_ec2(server):
    import boto3

    from factory.local.builder.ami_trees import AmiTrees

    server, state = server
    try:
        ec2 = boto3.client("ec2", region_name="us-east-1", endpoint_url=server.endpoint,
                           aws_access_key_id="testing", aws_secret_access_key="testing")
        yield state, ec2
    finally:
        for tree in AmiTrees(state).ami_ids():
            AmiTrees(state).drop(tree)


def _ami(ec2, name: str) -> str:
    base = ec2.describe_images(Owners=["amazon"], MaxResults=5)["Images"][0]["ImageId"]  # any of moto's: one page
    instance = ec2.run_instances(ImageId=base, MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
    return ec2.create_image(InstanceId=instance, Name=name)["ImageId"]


def _upper(tmp_path, name: str):
    upper = tmp_path / name
    (upper / "etc" / "factory").mkdir(parents=True)
    (upper / "etc" / "factory" / "grow.json").write_text('{"max_gib": 40}')
    if os.geteuid() == 0:
        os.mknod(upper / "etc" / "removed", 0o600 | 0o020000, 0)  # an overlayfs whiteout: 0/0 character device
    return upper


def test_a_tree_is_kept_per_ami_and_goes_when_its_ami_is_deregistered(server_and_ec2, tmp_path):
    from factory.local.builder.ami_trees import AmiTrees

    state, ec2 = server_and_ec2
    trees = AmiTrees(state)
    gone, kept = _ami(ec2, "gone"), _ami(ec2, "kept")
    for ami in (gone, kept):
        trees.keep(ami, _upper(tmp_path, f"upper-{ami}"))
    tree = trees.tree(gone)
    assert tree is not None and (tree / "etc/factory/grow.json").read_text() == '{"max_gib": 40}'
    if os.geteuid() == 0:
        assert (tree / "etc" / "removed").stat().st_rdev == 0 and (tree / "etc" / "removed").is_char_device()
    assert not list(trees.root.glob("*.partial"))

    ec2.deregister_image(ImageId=gone)
    assert trees.tree(gone) is None  # the AWS layer dropped it with the AMI
    assert trees.tree(kept) is not None
    assert trees.ami_ids() == [kept]


def test_prune_drops_trees_whose_ami_moto_no_longer_has(server_and_ec2, tmp_path):
    from factory.local.builder.ami_trees import AmiTrees

    state, ec2 = server_and_ec2
    trees = AmiTrees(state)
    kept = _ami(ec2, "kept")
    trees.keep(kept, _upper(tmp_path, "a"))
    trees.keep("ami-0123456789abcdef0", _upper(tmp_path, "b"))  # no such AMI (a crash lost its deregistration)
    assert trees.prune(ec2) == ["ami-0123456789abcdef0"]
    assert trees.ami_ids() == [kept]
