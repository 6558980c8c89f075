"""factory.nextflow and `factory nextflow-config`: the config text, atomic writes, the queue check."""

from __future__ import annotations

import dataclasses
import os

import pytest

from factory.errors import FactoryError
from factory.nextflow import render_config, write_atomic
from factory.sizing import size_specs
from factory.spec import load_specs
from factory.tiers import Tier, choose_tiers
from tests.conftest import SPECS


@pytest.fixture(scope="module")
def specs():
    return load_specs([SPECS])


@pytest.fixture(scope="module")
def tiers(specs):
    return choose_tiers(size_specs(specs))


def test_config_sends_each_process_to_its_tiers_queue(specs, tiers):
    text = render_config(specs, tiers)
    lines = text.splitlines()
    assert "process.executor = 'awsbatch'" in lines
    assert "aws.region = 'us-east-1'" in lines
    assert "aws.batch.cliPath = '/home/ec2-user/miniconda/bin/aws'" in lines
    # what cliPath needs from every task image, said just above it
    above = " ".join(lines[:lines.index("aws.batch.cliPath = '/home/ec2-user/miniconda/bin/aws'")])
    assert "that image's C library" in above and "glibc 2.17 or newer" in above and "musl-based images (Alpine) cannot" in above
    queue_of = {task: f"factory-{t.name}" for t in tiers for task in t.tasks}
    for spec in specs:
        selector = [line for line in lines if f"withName: '{spec.nextflow.process}'" in line]
        assert len(selector) == 1, spec.name
        assert f"queue = '{queue_of[spec.name]}'" in selector[0]
    assert text.count("withName:") == len(specs)
    # Balanced braces: Nextflow would refuse the file otherwise.
    assert text.count("{") == text.count("}")


def test_shared_tier_gives_the_same_queue(specs):
    shared = choose_tiers(size_specs(specs), max_tiers=4)  # the GPU task and star-align-nvme (instance store) are groups of their own: the CPU specs on EBS share 2
    text = render_config(specs, shared)
    big = next(t for t in shared if len(t.tasks) == 2)
    for task in big.tasks:
        process = next(s.nextflow.process for s in specs if s.name == task)
        assert f"withName: '{process}'" in text
    assert text.count(f"queue = 'factory-{big.name}'") == 2


def test_quotes_in_a_process_name_are_escaped(specs, tiers):
    spec = dataclasses.replace(specs[0], nextflow=dataclasses.replace(specs[0].nextflow, process="A'B"))
    assert r"withName: 'A\'B'" in render_config([spec], tiers)


def test_tasks_that_disagree_on_region_or_cli_prefix_are_refused(specs, tiers):
    other = dataclasses.replace(specs[1], awscli=dataclasses.replace(specs[1].awscli, prefix="/opt/conda"))
    with pytest.raises(FactoryError, match="awscli.prefix"):
        render_config([specs[0], other], tiers)
    elsewhere = dataclasses.replace(specs[1], region="eu-west-1")
    with pytest.raises(FactoryError, match="region"):
        render_config([specs[0], elsewhere], tiers)


def test_task_without_tier_is_refused(specs):
    with pytest.raises(FactoryError, match="in no tier"):
        render_config(specs, [Tier("1g", 1, (specs[0].name,), (), specs[0].name)])


def test_write_is_atomic_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "conf" / "nextflow.config"
    write_atomic(target, "one\n")
    write_atomic(target, "two\n")
    assert target.read_text() == "two\n"
    assert sorted(os.listdir(target.parent)) == ["nextflow.config"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "nextflow.config"
    target.write_text("old\n")
    with pytest.raises(TypeError):
        write_atomic(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "old\n"
    assert sorted(os.listdir(tmp_path)) == ["nextflow.config"]


def test_cli_writes_the_file(cli, tmp_path, specs, tiers):
    out = tmp_path / "nextflow.config"
    r = cli("nextflow-config", "--offline", "--specs-dir", SPECS, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert out.read_text() == render_config(specs, tiers)
    assert f"wrote {out}" in r.stderr


def test_cli_one_task_to_stdout(cli):
    r = cli("nextflow-config", "salmon-quant", "--offline", "--specs-dir", SPECS)
    assert r.exit_code == 0, r.stderr
    assert "withName: 'SALMON_QUANT'" in r.stdout and "STAR_ALIGN" not in r.stdout


def test_cli_unknown_task_is_a_usage_error(cli):
    r = cli("nextflow-config", "no-such-task", "--offline", "--specs-dir", SPECS)
    assert r.exit_code == 2
    assert "no spec for task 'no-such-task'" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize(
    "make_out, needle",
    [
        (lambda tmp: tmp, "is a folder"),
        (lambda tmp: (tmp / "plain-file").write_text("x") and tmp / "plain-file" / "nextflow.config", "cannot write there"),
    ],
    ids=["folder", "under-a-file"],
)
def test_cli_unwritable_out_is_a_clear_error(cli, tmp_path, make_out, needle):
    out = make_out(tmp_path)
    r = cli("nextflow-config", "--offline", "--specs-dir", SPECS, "--out", out)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert needle in r.stderr and str(out) in r.stderr
    assert not [p for p in tmp_path.rglob("*.tmp")]  # no temporary file left behind
