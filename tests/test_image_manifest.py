"""factory.image_manifest without a cloud: reading a fetched manifest, finding the one of
a shared image by its content hash, and the headline tags within AWS's limits."""

from __future__ import annotations

import json

import pytest

from factory import image_manifest
from factory.errors import FactoryError

MANIFEST = {
    "schema": image_manifest.SCHEMA,
    "task": "salmon-quant",
    "image_hash": "a" * 64,
    "os": {"name": "Amazon", "version": "2023", "family": "RedHat", "architecture": "x86_64"},
    "kernel": "6.1.0-x",
    "docker": {"version": "25.0.6", "storage_driver": "overlay2", "data_root": "/var/lib/docker", "data_root_size_gib": 30.0},
    "containerd": {"version": "1.7.20"},
    "ecs_agent": None,
    "awscli": {"path": "/home/ec2-user/miniconda/bin/aws", "version": "1.32.27"},
    "packages": {"manager": "rpm", "count": 0, "list": []},
}


def test_headline_tags_leave_out_what_the_image_lacks_and_fit_aws_limits():
    tags = image_manifest.headline_tags(MANIFEST)
    assert tags == {
        "factory:os": "Amazon 2023",
        "factory:kernel": "6.1.0-x",
        "factory:docker": "25.0.6 overlay2",
        "factory:awscli": "1.32.27",
    }
    long = {**MANIFEST, "kernel": "k" * 400, "ecs_agent": {"version": "1.88.0", "package": "ecs-init 1.88.0-1"}}
    tags = image_manifest.headline_tags(long)
    assert tags["factory:kernel"] == "k" * 256 and tags["factory:ecs-agent"] == "1.88.0"
    assert all(len(k) <= 128 and len(v) <= 256 for k, v in tags.items())


def test_a_file_that_is_not_a_manifest_is_named(tmp_path):
    bad = tmp_path / "image-manifest.json"
    bad.write_text("{not json")
    with pytest.raises(FactoryError, match=rf"{bad}: not an image manifest"):
        image_manifest.read(bad)
    bad.write_text(json.dumps({"schema": "something else"}))
    with pytest.raises(FactoryError, match="its schema is not factory/image-manifest/1"):
        image_manifest.read(bad)
    with pytest.raises(FactoryError, match="no image manifest there"):
        image_manifest.read(tmp_path / "missing.json")


def test_find_prefers_the_task_s_own_and_finds_a_shared_image_s_by_its_hash(tmp_path):
    for task, digest in (("salmon-quant", "a" * 64), ("star-align", "b" * 64)):
        (tmp_path / task).mkdir()
        (tmp_path / task / image_manifest.FILE_NAME).write_text(json.dumps({**MANIFEST, "task": task, "image_hash": digest}))
    path, m = image_manifest.find(tmp_path, "salmon-quant")
    assert path == tmp_path / "salmon-quant" / image_manifest.FILE_NAME and m["task"] == "salmon-quant"
    # a copy of star-align shares its AMI: the manifest of the bake that made it
    path, m = image_manifest.find(tmp_path, "star-align-copy", "b" * 64)
    assert m["task"] == "star-align"
    # the task's own file describes another image: not that one
    assert image_manifest.find(tmp_path, "salmon-quant", "c" * 64) is None
    assert image_manifest.find(tmp_path / "nowhere", "salmon-quant") is None
