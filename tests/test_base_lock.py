"""The base lock (factory.base_lock, `factory lock`) against the local cloud's AWS endpoint.

No build host and no bake: moto's server with factory's rules answers the ECS-optimized
parameters as AWS does (JSON values, release dates), and `factory.local.aws.publish` plays
AWS releasing a base, rolling it back, deprecating and deregistering it. The bake that
reads only the lock is in tests/test_bake.py (its reuse bake), the status in
tests/test_status.py (its refresh).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from factory import base_lock
from factory.errors import FactoryError
from factory.local.aws.publish import publish_base, retire_base
from factory.spec import load_spec, load_specs
from tests.conftest import SPECS

REGION = "us-east-1"
PARAMETER = "/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended"


@dataclass
class Endpoint:
    """A cloud as factory.cloud.Cloud is, over moto's server: clients per region."""

    endpoint: str
    kind: str = "aws"
    _clients: dict = field(default_factory=dict)
    config_path: Path | None = None  # factory.yaml, as Cloud.config_path

    def register_config(self):
        from factory.config import load_config

        return load_config(self.config_path)

    def clients(self, region: str):
        from factory.aws import Clients

        if region not in self._clients:
            self._clients[region] = Clients(region=region, endpoint_url=self.endpoint)
        return self._clients[region]


@pytest.fixture
def cloud(moto, monkeypatch):
    moto.reset()
    for name, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(name, value)
    return Endpoint(moto.endpoint)


def specs_like(tmp_path: Path, **variants: dict) -> list:
    """The shipped salmon-quant under other names, with `image`/`region` changes."""
    folder = tmp_path / "specs"
    shutil.copytree(SPECS / "benchmarks", folder / "benchmarks", dirs_exist_ok=True)
    doc = yaml.safe_load((SPECS / "salmon-quant.yaml").read_text())
    for name, change in variants.items():
        d = json.loads(json.dumps(doc))
        d["name"] = name.replace("_", "-")
        d["image"].update(change.get("image", {}))
        if d["image"].get("architecture") == "arm64":
            d["batch"]["instance_types"] = ["m7g.xlarge"]
        if "region" in change:
            d["region"] = change["region"]
        (folder / f"{d['name']}.yaml").write_text(yaml.safe_dump(d))
    return load_specs([folder])


def test_factory_lock_on_the_shipped_specs_writes_the_same_bytes_twice(cloud, tmp_path):
    specs = load_specs([SPECS])
    texts = []
    for attempt in range(2):
        lock = base_lock.BaseLock(tmp_path / f"{attempt}.lock")
        base_lock.lock_bases(specs, cloud, lock)
        lock.save()
        texts.append(lock.path.read_text())
    assert texts[0] == texts[1]
    doc = yaml.safe_load(texts[0])
    entry = doc["bases"]["al2023-x86_64"]
    assert entry["parameter"] == PARAMETER and entry["image_name"].startswith("al2023-ami-ecs-hvm-2023.0.")
    assert entry["fields"]["ecs_agent_version"] and entry["fields"]["source_image_name"].startswith("al2023-ami-minimal-")
    assert "image_id" not in entry["fields"] and entry["regions"][REGION]["image_id"].startswith("ami-")
    assert entry["regions"][REGION]["parameter_version"] == 1
    assert entry["regions"][REGION]["last_modified"].endswith("T00:00:00Z")  # AWS's date, never the run's
    # Again over the written file: nothing moves, nothing is written.
    again = base_lock.load(tmp_path / "0.lock")
    assert base_lock.lock_bases(specs, cloud, again) == [] and not again.changed
    assert again.text() == texts[0]


def test_a_lock_holds_each_base_once_per_region_and_keys_by_family_architecture_accelerator(cloud, tmp_path):
    specs = specs_like(tmp_path, task_a={}, task_b={"region": "eu-west-1"}, task_c={"image": {"architecture": "arm64"}},
                       task_d={"image": {"base": "ami-0123456789abcdef0", "family": "al2023"}})
    lock = base_lock.BaseLock(tmp_path / "factory.lock")
    base_lock.lock_bases(specs, cloud, lock, regions=["us-west-2"])
    assert list(lock.bases) == ["al2023-arm64", "al2023-x86_64"]  # the pinned AMI needs no lock
    x86 = lock.bases["al2023-x86_64"]
    assert list(x86.regions) == ["eu-west-1", REGION, "us-west-2"]
    assert len({r.image_id for r in x86.regions.values()}) == 3  # one image name, an id per region
    assert lock.bases["al2023-arm64"].image_name.endswith("-arm64")
    key, parameter = base_lock.base_of(specs[0])
    assert (key.name, parameter) == ("al2023-x86_64", PARAMETER)


def test_a_region_added_to_a_locked_base_is_found_there_by_the_image_name(cloud, moto, tmp_path):
    """As aws/amazon-ecs-ami pins its sources by name: the lock's image in the new region,
    even after AWS recommends a newer one (a distribution region added later)."""
    specs = load_specs([SPECS])
    lock = base_lock.BaseLock(tmp_path / "factory.lock")
    base_lock.lock_bases(specs, cloud, lock)
    entry = lock.bases["al2023-x86_64"]
    name, here = entry.image_name, entry.regions[REGION].image_id
    publish_base(moto.endpoint, "al2023")  # AWS moved on in us-east-1 since the lock
    (change,) = [c for c in base_lock.lock_bases(specs, cloud, lock, regions=["eu-west-1"]) if c.base == "al2023-x86_64"]
    assert (change.region, change.new_name, change.old_name) == ("eu-west-1", name, None)
    eu = cloud.clients("eu-west-1").ec2().describe_images(ImageIds=[change.new_image])["Images"][0]
    assert eu["Name"] == name and change.new_image != here
    assert lock.bases["al2023-x86_64"].regions[REGION].image_id == here  # kept
    assert lock.bases["al2023-x86_64"].regions["eu-west-1"].parameter_version is None  # named by the lock, not the parameter
    lock.bases["al2023-x86_64"].image_name = "al2023-ami-ecs-hvm-2023.0.20200101-kernel-6.1-x86_64"
    with pytest.raises(FactoryError, match="is not in us-west-2 .*factory lock --update"):
        base_lock.lock_bases(specs, cloud, lock, regions=["us-west-2"])


def test_update_says_what_moved_after_aws_publishes_a_base_and_after_it_rolls_back(cloud, moto, tmp_path):
    specs = load_specs([SPECS])
    lock = base_lock.BaseLock(tmp_path / "factory.lock")
    base_lock.lock_bases(specs, cloud, lock)
    lock.save()
    first = lock.bases["al2023-x86_64"].image_name

    published = publish_base(moto.endpoint, "al2023")
    assert base_lock.lock_bases(specs, cloud, lock) == []  # without --update the lock holds
    (change,) = base_lock.lock_bases(specs, cloud, lock, update=True)
    assert (change.old_name, change.new_name, change.direction) == (first, published["name"], "newer")
    assert change.new_image == published["ami_id"] and f"{first} -> {published['name']}" in change.text()
    assert "ECS agent" in change.text()
    assert lock.bases["al2023-x86_64"].regions[REGION].parameter_version == 2

    back = publish_base(moto.endpoint, "al2023", rollback=True)
    assert back["name"] == first
    (change,) = base_lock.lock_bases(specs, cloud, lock, update=True)
    assert change.direction == "backwards" and "backwards: AWS rolled the parameter back" in change.text()
    assert lock.bases["al2023-x86_64"].image_name == first
    assert lock.bases["al2023-x86_64"].regions[REGION].parameter_version == 3


def test_the_cli_writes_updates_and_prints_the_diff(cloud, moto, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    path = tmp_path / "factory.lock"
    r = cli("lock", "--specs-dir", SPECS, "--lock", path)
    assert r.exit_code == 0, r.stdout + r.stderr
    assert "al2023-x86_64 in us-east-1: added al2023-ami-ecs-hvm-" in r.stdout and f"wrote {path}" in r.stderr
    text = path.read_text()
    r = cli("lock", "--specs-dir", SPECS, "--lock", path)
    assert r.exit_code == 0 and r.stdout == "" and "every base is locked" in r.stderr and path.read_text() == text
    published = publish_base(moto.endpoint, "al2023")
    r = cli("lock", "--update", "--specs-dir", SPECS, "--lock", path, "--json")
    assert r.exit_code == 0, r.stderr
    (change,) = json.loads(r.stdout)["changes"]
    assert change["new_name"] == published["name"] and change["direction"] == "newer"
    assert published["ami_id"] in path.read_text()


def test_bake_adds_a_missing_base_and_refresh_resolves_it_again(cloud, moto, tmp_path):
    from factory.bake.build import lock_bases

    specs = specs_like(tmp_path, task_a={}, task_b={"image": {"architecture": "arm64"}})
    lock = base_lock.BaseLock(tmp_path / "factory.lock")
    base_lock.lock_bases(specs[:1], cloud, lock)
    assert list(lock.bases) == ["al2023-x86_64"]
    lock.changed = False
    assert lock_bases(specs, cloud, lock) == {}
    assert list(lock.bases) == ["al2023-arm64", "al2023-x86_64"] and lock.changed
    assert any("base al2023-arm64 was not in" in n and "added to it" in n for n in lock.notes), lock.notes

    old = lock.image_id(base_lock.base_of(specs[0])[0], REGION)
    published = publish_base(moto.endpoint, "al2023")
    assert lock_bases(specs, cloud, lock) == {} and lock.image_id(base_lock.base_of(specs[0])[0], REGION) == old
    lock_bases(specs, cloud, lock, refresh=True)
    assert lock.image_id(base_lock.base_of(specs[0])[0], REGION) == published["ami_id"]
    assert any(n.startswith("--refresh moved base al2023-x86_64") for n in lock.notes), lock.notes


@pytest.mark.parametrize("how", ["deprecate", "deregister"])
def test_a_deprecated_or_deregistered_locked_ami_names_the_entry_and_the_bump(cloud, moto, tmp_path, how):
    from factory.bake.build import bake_task, lock_bases

    specs = load_specs([SPECS])
    lock = base_lock.BaseLock(tmp_path / "factory.lock")
    base_lock.lock_bases(specs, cloud, lock)
    ami = lock.bases["al2023-x86_64"].regions[REGION].image_id
    publish_base(moto.endpoint, "al2023")  # AWS moved on; then retires the locked image
    retire_base(moto.endpoint, ami, how)
    problems = lock_bases(specs, cloud, lock)
    assert set(problems) == {s.name for s in specs if base_lock.base_of(s)[0].name == "al2023-x86_64"}  # not the GPU base
    cpu = next(s for s in specs if s.image.accelerator == "none")
    message = problems[cpu.name]
    assert f"{lock.path}: bases.al2023-x86_64.regions.{REGION}: {ami}" in message
    assert ("is deprecated since" if how == "deprecate" else "is deregistered") in message
    assert "run `factory lock --update`" in message
    with pytest.raises(FactoryError, match="factory lock --update"):
        bake_task(cpu, cloud=cloud, lock=lock, build_root=tmp_path / "build", register=False)
    # The bump moves the lock on to what AWS recommends now.
    base_lock.lock_bases(specs, cloud, lock, update=True)
    assert lock_bases(specs, cloud, lock) == {}


def test_a_damaged_lock_file_is_an_error_naming_it(tmp_path):
    path = tmp_path / "factory.lock"
    path.write_text("format: 1\nbases:\n  al2023-x86_64: {family: al2023}\n")
    with pytest.raises(FactoryError, match=r"factory.lock: bases.al2023-x86_64: missing or malformed field"):
        base_lock.load(path)
    path.write_text("[not, a, lock]")
    with pytest.raises(FactoryError, match="not a factory lock file"):
        base_lock.load(path)
    assert base_lock.load(tmp_path / "none.lock").bases == {}


def test_bumping_a_base_rebakes_exactly_the_images_on_it(tmp_path):
    """The lock's entry (its image id in the spec's region) is what the image hash takes of the base."""
    from factory.image_identity import expected_image_hash

    specs = specs_like(tmp_path, task_a={}, task_b={"image": {"architecture": "arm64"}})
    lock = base_lock.BaseLock(tmp_path / "factory.lock")
    for spec, ami in zip(specs, ("ami-0aaaaaaaaaaaaaaa1", "ami-0bbbbbbbbbbbbbbb1"), strict=True):
        key, parameter = base_lock.base_of(spec)
        lock.bases[key.name] = base_lock.LockEntry(key, parameter, f"name-{ami}", {}, {REGION: base_lock.RegionEntry(ami)})
    before = {s.name: expected_image_hash(s, lock.image_id(base_lock.base_of(s)[0], REGION)) for s in specs}
    lock.bases["al2023-x86_64"].regions[REGION] = base_lock.RegionEntry("ami-0aaaaaaaaaaaaaaa2")
    after = {s.name: expected_image_hash(s, lock.image_id(base_lock.base_of(s)[0], REGION)) for s in specs}
    assert after["task-a"] != before["task-a"] and after["task-b"] == before["task-b"]


def test_status_of_a_base_says_newer_backwards_or_the_same():
    key = base_lock.BaseKey("al2023", "x86_64")
    lock = base_lock.BaseLock(Path("factory.lock"))
    lock.bases[key.name] = base_lock.LockEntry(key, PARAMETER, "al2023-ami-ecs-hvm-2023.0.20260922-kernel-6.1-x86_64", {},
                                               {REGION: base_lock.RegionEntry("ami-1")})

    def now(image_id: str, date: str):
        return base_lock.Resolved(image_id, f"al2023-ami-ecs-hvm-2023.0.{date}-kernel-6.1-x86_64", {}, 2, None)

    assert base_lock.status_of(lock, key, REGION, now("ami-1", "20260922")).state == "same"
    newer = base_lock.status_of(lock, key, REGION, now("ami-2", "20261001"))
    assert newer.state == "newer" and "AWS recommends a newer base" in newer.text() and "factory lock --update" in newer.text()
    older = base_lock.status_of(lock, key, REGION, now("ami-0", "20260901"))
    assert older.state == "backwards" and "rolled its parameter back" in older.text()
    assert base_lock.status_of(lock, key, "eu-west-1", now("ami-9", "20260922")).state == "new"
    assert base_lock.status_of(lock, key, REGION, None).state == "missing"


def test_the_lock_text_is_sorted_and_carries_no_time_of_the_run(tmp_path):
    spec = load_spec(SPECS / "salmon-quant.yaml")
    key, parameter = base_lock.base_of(spec)
    lock = base_lock.BaseLock(tmp_path / "factory.lock")
    lock.bases[key.name] = base_lock.LockEntry(key, parameter, "n", {"os": "Amazon Linux 2023", "ecs_agent_version": "1.0"},
                                               {"us-west-2": base_lock.RegionEntry("ami-2", 3, "2026-09-22T00:00:00Z"),
                                                REGION: base_lock.RegionEntry("ami-1", 1, "2026-09-22T00:00:00Z")})
    lock.save()
    text = lock.path.read_text()
    assert text.startswith("# factory.lock") and text.index("ecs_agent_version") < text.index("os:")
    assert text.index(REGION) < text.index("us-west-2")
    assert base_lock.load(lock.path).text() == text


def test_a_bake_locks_its_base_where_its_image_is_distributed_and_factory_lock_keeps_it(cloud, moto, tmp_path, cli, monkeypatch):
    """distribute: regions are locked too, by the lock's image name (the same in every region);
    `factory lock --config` keeps them, a whole lock without the distribution drops them."""
    from factory.bake.build import lock_bases

    specs = specs_like(tmp_path, task_a={})
    config = tmp_path / "factory.yaml"
    config.write_text("distribute:\n  regions: [eu-west-1]\n  kms_keys: {eu-west-1: alias/factory-ami}\n")
    path = tmp_path / "factory.lock"
    lock = base_lock.BaseLock(path)
    base_lock.lock_bases(specs, cloud, lock)  # locked before the distribution was added
    assert list(lock.bases["al2023-x86_64"].regions) == [REGION]
    cloud.config_path = config
    lock.changed = False
    assert lock_bases(specs, cloud, lock) == {}
    assert lock.changed  # a region added to a locked base is a change to write (it was not: the entry changed in place)
    entry = lock.bases["al2023-x86_64"]
    assert sorted(entry.regions) == ["eu-west-1", REGION]
    eu = cloud.clients("eu-west-1").ec2().describe_images(ImageIds=[entry.regions["eu-west-1"].image_id])["Images"][0]
    assert eu["Name"] == entry.image_name
    assert any("had no image in eu-west-1" in n for n in lock.notes), lock.notes
    lock.save()
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    folder = tmp_path / "specs"
    kept = cli("lock", "--specs-dir", folder, "--lock", path, "--config", config, "--json")
    assert kept.exit_code == 0, kept.stderr
    assert json.loads(kept.stdout)["dropped"] == [] and "eu-west-1" in path.read_text()
    bare = tmp_path / "bare.yaml"
    bare.write_text("prune: {keep: 2}\n")
    assert cli("lock", "--specs-dir", folder, "--lock", path, "--config", bare).exit_code == 0
    assert "eu-west-1" not in path.read_text()
