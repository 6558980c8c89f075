"""`storage.instance_store: docker` (issue 20 §2): the spec field, validate's refusals,
sizing (the store's need, the root for the OS alone, the cost difference), the table of
instance stores and its refresh from DescribeInstanceTypes (moto's server answers it with
AWS's recorded instance types)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import SPECS

BENCH = "input_gib,index_gib,scratch_gib,output_gib\n1,2,1,0.5\n2,2,2,1\n4,2,4,2\n"


def write(tmp_path: Path, types: str = "[m6id.xlarge]", extra: str = "", image: str = "", name: str = "nvme-task",
          store: str = "  instance_store: docker\n") -> Path:
    (tmp_path / "bench.csv").write_text(BENCH)
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        f"name: {name}\ndescription: A task on NVMe.\n{image}"
        "storage:\n  benchmarks: bench.csv\n  max_input_gib: 10\n  concurrent_tasks: 2\n" + store + extra
        + f"batch:\n  instance_types: {types}\n"
    )
    return path


def problems(path: Path) -> dict[str, str]:
    from factory.spec import check_file

    return {p.field: p.message for p in check_file(path).problems}


def test_the_spec_loads_and_only_a_store_spec_changes_its_hash(tmp_path):
    from factory.spec import load_spec

    spec = load_spec(write(tmp_path))
    assert spec.storage.instance_store == "docker" and spec.storage.on_instance_store
    assert spec.to_json()["storage"]["instance_store"] == "docker"
    off = load_spec(write(tmp_path, store="  instance_store: off\n", name="off-task"))
    plain = load_spec(write(tmp_path, store="", name="plain-task"))
    assert not off.storage.on_instance_store and "instance_store" not in off.to_json()["storage"]
    assert off.to_json()["storage"] == plain.to_json()["storage"]


def test_a_bad_value_is_named(tmp_path):
    found = problems(write(tmp_path, store="  instance_store: nvme\n"))
    assert "must be one of off, docker" in found["storage.instance_store"]


def test_refused_with_grow_naming_both(tmp_path):
    found = problems(write(tmp_path, extra="  grow:\n    max_gib: 500\n"))
    assert "cannot be combined with storage.grow" in found["storage.instance_store"]
    assert "remove storage.grow" in found["storage.instance_store"]


def test_refused_on_devicemapper_al1(tmp_path):
    found = problems(write(tmp_path, image="image:\n  base: ecs-al1\n"))
    assert "devicemapper" in found["storage.instance_store"] and "ecs-al2023" in found["storage.instance_store"]


def test_every_listed_type_must_hold_the_need(tmp_path):
    # 2 concurrent tasks of the fit's data + 60 GiB of images, +20%, +1 GiB Docker state: 137.8 GiB
    found = problems(write(tmp_path, types="[m6id.xlarge, m5.large, m5d.large, c6id, optimal, zz9.large]",
                           extra="  container_images_gib: 60\n"))
    assert "batch.instance_types[0]" not in found  # 237 GB: 218 GiB usable
    assert "m5.large has no instance store" in found["batch.instance_types[1]"]
    assert "holds 137.8 GiB" in found["batch.instance_types[1]"]
    small = found["batch.instance_types[2]"]  # m5d.large: one 75 GB disk
    assert "m5d.large's instance store of 75 GB (70 GiB; 1 x 75 GB SSD" in small and "less than the 137.8 GiB" in small
    family = found["batch.instance_types[3]"]
    assert "c6id.large's instance store of 118 GB" in family and "family c6id: Batch may pick its smallest size" in family
    assert "optimal lets Batch pick types without instance store" in found["batch.instance_types[4]"]
    assert "zz9.large is not in factory's instance-store table" in found["batch.instance_types[5]"]
    assert "factory instance-storage --refresh" in found["batch.instance_types[5]"]


def test_a_family_whose_every_size_holds_it_passes(tmp_path):
    assert problems(write(tmp_path, types="[c6id, m6id.large]")) == {}


def test_a_spec_with_store_off_is_not_checked(tmp_path):
    assert problems(write(tmp_path, types="[m5.large]", store="")) == {}


def test_the_cli_refuses_with_exit_1_and_no_traceback(cli, tmp_path):
    r = cli("validate", str(write(tmp_path, types="[m5.large]")))
    assert r.exit_code == 1 and "batch.instance_types[0]: m5.large has no instance store" in r.stdout + r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_size_roots_the_os_alone_and_shows_the_cost_difference(cli):
    r = cli("size", "star-align-nvme", "--specs-dir", str(SPECS), "--json")
    assert r.exit_code == 0, r.stderr
    plan = json.loads(r.stdout)
    store = plan["instance_store"]
    assert plan["volume_gib"] == 30  # the AL2023 AMI's root, for the OS alone
    plain = json.loads(cli("size", "star-align", "--specs-dir", str(SPECS), "--json").stdout)
    assert store["ebs_volume_gib"] == plain["volume_gib"]  # what star-align's own root holds
    assert store["saves_usd_per_month"] == pytest.approx((store["ebs_volume_gib"] - 30) * 0.08, abs=0.01)
    assert store["need_gib"] == pytest.approx(plain["breakdown"]["need_gib"] * 1.2 + 1, abs=0.01)
    assert store["types"]["r6id.2xlarge"]["total_gb"] == 474 and store["types"]["r6id.2xlarge"]["usable_gib"] > store["need_gib"]
    text = cli("size", "star-align-nvme", "--specs-dir", str(SPECS)).stdout
    assert "instance store" in text and "on EBS instead" in text and "saves" in text


def test_store_and_ebs_tasks_never_share_a_tier():
    from factory.spec import load_spec
    from factory.tiers import tier_group

    nvme, plain = load_spec(SPECS / "star-align-nvme.yaml"), load_spec(SPECS / "star-align.yaml")
    assert dict(tier_group(nvme))["storage.instance_store"] == "docker"
    assert dict(tier_group(plain))["storage.instance_store"] == "off"


def test_render_enables_the_role_only_for_a_store_task(tmp_path, monkeypatch):
    from factory import render
    from factory.cloud import Cloud
    from factory.sizing import size_task
    from factory.spec import load_spec

    monkeypatch.setenv(render.CALLER_CIDR_ENV, "203.0.113.7/32")
    (tmp_path / "factory.yaml").write_text("{}\n")
    target = Cloud("aws", config_path=tmp_path / "factory.yaml").target("us-east-1")
    nvme, plain = load_spec(SPECS / "star-align-nvme.yaml"), load_spec(SPECS / "star-align.yaml")
    v = render.variables_for(nvme, size_task(nvme), "ami-0123456789abcdef0", target)
    assert v["instance_store_enabled"] is True and v["volume_gib"] == 30
    assert "instance_store_enabled" not in render.variables_for(plain, size_task(plain), "ami-0123456789abcdef0", target)


def test_the_table_is_aws_data(tmp_path):
    from factory import instance_store

    table = instance_store.table()
    assert table["m5.large"] is None
    store = table["m6id.12xlarge"]
    assert (store.total_gb, store.disks, store.nvme) == (2850, ((2, 1425, "ssd"),), "required")
    assert store.disk_count == 2 and store.capacity_gib == pytest.approx(2850e9 / 2**30)
    doc = json.loads(instance_store.data_path().read_text())
    assert doc["source"] and doc["region"] == "us-east-1" and len(doc["types"]) > 1000


def test_refresh_reads_describe_instance_types_and_writes_atomically(cli, moto, tmp_path, monkeypatch):
    from factory import instance_store

    monkeypatch.setenv("AWS_ENDPOINT_URL", moto.endpoint)
    for k, v in (("AWS_ACCESS_KEY_ID", "testing"), ("AWS_SECRET_ACCESS_KEY", "testing")):
        monkeypatch.setenv(k, v)
    out = tmp_path / "instance-storage.json"
    out.write_text(json.dumps({"types": {"m6id.large": None, "gone.large": None}}))
    r = cli("instance-storage", "--refresh", "--region", "us-east-1", "--out", str(out), "--json")
    assert r.exit_code == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["types"] > 1000 and summary["with_instance_store"] > 300
    assert "gone.large" in summary["removed"] and "m6id.large" in summary["changed"]
    written = instance_store.table(str(out))
    assert written["m6id.large"].total_gb == 118 and written["m5.large"] is None
    assert not list(tmp_path.glob("*.tmp"))
    # The shipped table says what AWS says for every type moto knows.
    shipped = json.loads(instance_store.data_path().read_text())["types"]
    fresh = json.loads(out.read_text())["types"]
    assert shipped == fresh


def test_refresh_takes_no_types_and_show_refuses_an_unknown_type(cli):
    assert cli("instance-storage", "--refresh", "m5.large").exit_code == 2
    bad = cli("instance-storage", "zz9.large")
    assert bad.exit_code == 2 and "not in factory's instance-store table" in bad.stderr
    good = cli("instance-storage", "m6id", "--json")
    assert json.loads(good.stdout)["m6id.large"]["total_gb"] == 118


def test_a_store_that_is_not_nvme_is_refused(tmp_path):
    """d2's HDDs are instance store, but not NVMe: the boot unit finds the store by its NVMe model."""
    found = problems(write(tmp_path, types="[d2.xlarge]"))
    assert "d2.xlarge's instance store is not NVMe (6144 GB" in found["batch.instance_types[0]"]
    assert "3 x 2048 GB HDD, NVMe unsupported" in found["batch.instance_types[0]"]


def test_size_refuses_as_validate_does(cli, tmp_path):
    r = cli("size", str(write(tmp_path, types="[m5d.large]", extra="  container_images_gib: 60\n")))
    assert r.exit_code == 1 and "Traceback" not in r.stderr
    assert "batch.instance_types[0]: m5d.large's instance store of 75 GB" in r.stderr and "137.8 GiB" in r.stderr
