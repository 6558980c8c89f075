"""`factory validate`: good specs pass; every class of bad input gets a clear message and exit 1 or 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.conftest import REPO, SPECS

GOOD = textwrap.dedent(
    """\
    name: demo-task
    description: A task used by the tests.
    storage:
      benchmarks: bench.csv
      max_input_gib: 10
      concurrent_tasks: 2
    """
)
BENCH = "input_gib,index_gib,scratch_gib,output_gib\n1,2,1,0.5\n2,2,2,1\n4,2,4,2\n"


def write_spec(tmp_path: Path, text: str | bytes, name: str = "demo-task.yaml", bench: str | None = BENCH) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    if bench is not None:
        (tmp_path / "bench.csv").write_text(bench)
    return path


def with_lines(*extra: str, drop: str | None = None) -> str:
    lines = [line for line in GOOD.splitlines() if drop is None or not line.strip().startswith(drop)]
    return "\n".join(lines + list(extra)) + "\n"


# (id, spec text, expected message fragment)
BAD_SPECS = [
    ("empty-file", "", "file is empty"),
    ("comments-only", "# nothing here\n\n", "file is empty"),
    ("yaml-syntax", "name: demo-task\ndescription: [unclosed\nstorage: {}\n", "YAML syntax error"),
    ("yaml-syntax-line", "name: demo-task\n  description: bad indent\n", "line 2, column"),
    ("top-level-list", "- name: demo-task\n", "top level must be a mapping"),
    ("top-level-scalar", "just a string\n", "top level must be a mapping"),
    ("duplicate-key", GOOD + "name: other\n", "duplicate key 'name' (first at line 1)"),
    ("binary-junk", b"\x7fELF\x02\x01\x01\x00\x00\x00\x00", "not a text file"),
    ("not-utf8", b"name: caf\xe9\n", "not UTF-8"),
    ("deep-nesting", "a: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32 levels"),
    (
        "alias-bomb",
        'a: &a ["x","x","x","x","x","x","x","x","x"]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n',
        "YAML aliases (*a) are not allowed",
    ),
    ("huge-value", "name: demo-task\ndescription: " + "x" * (3 * 1024 * 1024) + "\n", "larger than 256 KiB"),
    ("typo-key", GOOD.replace("concurrent_tasks: 2", "concurrent_tasks: 2\n  headrom: 0.3"), "storage.headrom: unknown key; did you mean `headroom`?"),
    ("unknown-top-key", GOOD + "colour: blue\n", "demo-task.yaml::colour: unknown key"),
    ("missing-name", with_lines(drop="name:"), "::name: is required but missing"),
    ("missing-storage", "name: demo-task\ndescription: d\n", "::storage: is required but missing"),
    ("missing-max-input", with_lines(drop="max_input_gib"), "storage.max_input_gib: is required but missing"),
    ("bad-name-pattern", GOOD.replace("name: demo-task", "name: Demo_Task"), "::name: must be 2-40 lowercase letters"),
    ("zero-concurrency", GOOD.replace("concurrent_tasks: 2", "concurrent_tasks: 0"), "storage.concurrent_tasks: must be >= 1; got 0"),
    ("string-concurrency", GOOD.replace("concurrent_tasks: 2", "concurrent_tasks: two"), "storage.concurrent_tasks: must be a whole number, not a string"),
    ("negative-input", GOOD.replace("max_input_gib: 10", "max_input_gib: -3"), "storage.max_input_gib: must be > 0; got -3"),
    ("beyond-ebs", GOOD.replace("max_input_gib: 10", "max_input_gib: 20000"), "beyond one gp3 volume (16384 GiB)"),
    ("bool-input", GOOD.replace("max_input_gib: 10", "max_input_gib: yes"), "storage.max_input_gib: must be a number, not a boolean"),
    ("headroom-too-big", with_lines("  headroom: 10"), "storage.headroom: must be <= 4; got 10"),
    ("bad-base", with_lines("image:", "  base: ubuntu-22.04"), "image.base: must be ecs-al2023, ecs-al2, ecs-al1 or a pinned AMI id"),
    ("arch-typo", with_lines("image:", "  architecture: x86"), "image.architecture: must be one of x86_64, arm64; got 'x86'; did you mean `x86_64`?"),
    ("pinned-ami-no-family", with_lines("image:", "  base: ami-0123456789abcdef0"), "image.family: is required with a pinned AMI"),
    ("al1-arm64", with_lines("image:", "  base: ecs-al1", "  architecture: arm64"), "al1) has no arm64 image"),
    ("storage-is-list", "name: demo-task\ndescription: d\nstorage:\n  - max_input_gib: 3\n", "::storage: must be a mapping, not a list"),
    ("benchmark-missing", GOOD.replace("bench.csv", "nope.csv"), "storage.benchmarks: file"),
    ("benchmark-no-column", GOOD, "storage.benchmarks: cannot use"),
    ("benchmark-one-row", GOOD, "has 1 measured run(s); add at least 2 rows"),
    ("vcpus-inverted", with_lines("batch:", "  min_vcpus: 64", "  max_vcpus: 8"), "batch.min_vcpus: (64) is larger than batch.max_vcpus (8)"),
    ("bid-on-demand", with_lines("batch:", "  spot_bid_percentage: 60"), "batch.spot_bid_percentage: applies only with `provisioning: spot`"),
    ("arm-with-x86-types", with_lines("image:", "  architecture: arm64", "batch:", "  instance_types: [m5.xlarge]"), "batch.instance_types[0]: m5.xlarge is an x86_64 type"),
    ("duplicate-instance-types", with_lines("batch:", "  instance_types: [m5.xlarge, m5.xlarge]"), "batch.instance_types: lists the same item twice"),
    ("relative-prefix", with_lines("awscli:", "  prefix: miniconda"), "awscli.prefix: must be an absolute path"),
    ("non-string-key", GOOD + "1: one\n", "keys must be text"),
    # Hostile but small files: each once took seconds (a 20,000-item list of mappings made
    # the schema's uniqueItems check quadratic: minutes) or printed a traceback.
    ("long-list-of-mappings", with_lines("batch:", "  instance_types: [" + ",".join(f"{{a: {i}}}" for i in range(20000)) + "]"), "a list of more than 256 items"),
    ("many-keys", "".join(f"k{i}: {i}\n" for i in range(20000)), "a mapping of more than 256 items"),
    ("huge-number", GOOD.replace("max_input_gib: 10", "max_input_gib: 1" + "0" * 5000), "a number of 5001 characters"),
    ("nan-input", GOOD.replace("max_input_gib: 10", "max_input_gib: .nan"), "storage.max_input_gib: must be a finite number, not nan"),
    ("inf-headroom", with_lines("  headroom: .inf"), "storage.headroom: must be a finite number, not inf"),
    ("volume-beyond-gp3", with_lines("  container_images_gib: 20000"), "::storage: cannot be sized: needs a"),
    ("name-not-file", GOOD.replace("name: demo-task", "name: other-task"), "::name: is 'other-task' but the file is demo-task.yaml; rename the file to other-task.yaml or set `name: demo-task`"),
]

BENCH_OVERRIDES = {
    "benchmark-no-column": "input_gib,index_gib,output_gib\n1,2,3\n2,2,3\n",
    "benchmark-one-row": "input_gib,index_gib,scratch_gib,output_gib\n1,2,1,0.5\n",
}


def test_good_specs_in_repo_are_valid(cli):
    result = cli("validate", SPECS)
    assert result.exit_code == 0, result.output
    assert "4 of 4 spec(s) valid" in result.output


def test_default_path_is_specs(cli, monkeypatch):
    monkeypatch.chdir(REPO)
    result = cli("validate")
    assert result.exit_code == 0, result.output


def test_minimal_good_spec(cli, tmp_path):
    result = cli("validate", write_spec(tmp_path, GOOD))
    assert result.exit_code == 0, result.output


def test_the_bad_specs_cover_every_rule_family():
    assert len(BAD_SPECS) >= 25 and len({c[0] for c in BAD_SPECS}) == len(BAD_SPECS)


@pytest.mark.parametrize("case,text,expected", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_spec(cli, tmp_path, case, text, expected):
    # In-process with exceptions not caught: an error the CLI failed to turn into a
    # message would raise here, so no separate "no traceback" check is needed.
    path = write_spec(tmp_path, text, bench=BENCH_OVERRIDES.get(case, BENCH))
    start = time.monotonic()
    result = cli("validate", path)
    elapsed = time.monotonic() - start
    assert result.exit_code == 1, result.output
    assert expected in result.output, result.output
    assert "demo-task.yaml" in result.output  # every message names the file
    # The speed goal (refused within a second) is measured by bench/startup/run.py; this
    # bound only catches a hang (one case once took four minutes), with room for a busy CI.
    assert elapsed < 15, f"{case} took {elapsed:.2f}s"


def test_every_error_in_every_file_is_reported(cli, tmp_path):
    (tmp_path / "bench.csv").write_text(BENCH)
    (tmp_path / "demo-task.yaml").write_text(GOOD)
    (tmp_path / "one.yaml").write_text(GOOD.replace("demo-task", "one").replace("concurrent_tasks: 2", "concurrent_tasks: 0\n  headrom: 1"))
    (tmp_path / "two.yaml").write_text("name: two\n")
    result = cli("validate", tmp_path)
    assert result.exit_code == 1
    out = result.output
    assert "one.yaml::storage.concurrent_tasks: must be >= 1" in out
    assert "one.yaml::storage.headrom: unknown key; did you mean `headroom`?" in out
    assert "two.yaml::description: is required but missing" in out
    assert "two.yaml::storage: is required but missing" in out
    assert "1 of 3 spec(s) valid, 4 error(s)" in out


def test_json_report(cli, tmp_path):
    (tmp_path / "bench.csv").write_text(BENCH)
    (tmp_path / "demo-task.yaml").write_text(GOOD)
    (tmp_path / "bad.yaml").write_text("name: bad\ndescription: d\nstorage: {max_input_gib: 0}\n")
    result = cli("validate", "--json", tmp_path)
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False
    by_file = {Path(f["file"]).name: f for f in report["files"]}
    assert by_file["demo-task.yaml"]["valid"] is True and by_file["demo-task.yaml"]["task"] == "demo-task"
    errors = by_file["bad.yaml"]["errors"]
    assert {"field": "storage.max_input_gib", "message": "must be > 0; got 0"}.items() <= errors[0].items()
    assert report["error_count"] == len(errors) == 2  # max_input_gib and the missing benchmarks/footprint


def test_list_index_errors_are_in_numeric_order(cli, tmp_path):
    types = ", ".join(f"X{i}" for i in range(12))
    result = cli("validate", write_spec(tmp_path, with_lines("batch:", f"  instance_types: [{types}]")))
    fields = [line.split("::")[1].split(":")[0] for line in result.output.splitlines() if "::" in line]
    assert fields == [f"batch.instance_types[{i}]" for i in range(12)]


def test_a_list_at_the_cap_is_still_read(cli, tmp_path):
    from factory.yamlsafe import MAX_ITEMS

    types = ", ".join(f"m{i}.xlarge" for i in range(MAX_ITEMS))
    result = cli("validate", write_spec(tmp_path, with_lines("batch:", f"  instance_types: [{types}]")))
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "make_path,expected",
    [
        (lambda tmp: tmp / "missing.yaml", "no such file or folder"),
        (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no spec files (*.yaml) in this folder"),
        (lambda tmp: Path("/proc/self/mem"), "cannot read"),
    ],
    ids=["missing-file", "empty-folder", "unreadable"],
)
def test_usage_errors_exit_2(cli, tmp_path, make_path, expected):
    result = cli("validate", make_path(tmp_path))
    assert result.exit_code == 2, result.output
    assert expected in result.output
    assert "Traceback" not in result.output


def test_subprocess_has_no_traceback_and_right_status(tmp_path):
    """The installed console script, not just the in-process runner."""
    path = write_spec(tmp_path, "name: [\n")
    proc = subprocess.run([sys.executable, "-m", "factory", "validate", str(path)], capture_output=True, text=True)
    assert proc.returncode == 1
    assert "YAML syntax error" in proc.stdout and "Traceback" not in proc.stderr + proc.stdout


def test_schema_is_valid_against_its_metaschema():
    from jsonschema import Draft202012Validator

    from factory.spec import schema

    Draft202012Validator.check_schema(schema())
    assert schema()["$schema"].endswith("2020-12/schema")


def test_defaults_are_filled(tmp_path):
    from factory.spec import load_spec

    spec = load_spec(write_spec(tmp_path, GOOD))
    assert spec.image.base == "ecs-al2023" and spec.image.family == "al2023"
    assert spec.image.architecture == "x86_64" and spec.image.volume == "launch-template"
    assert spec.awscli.cli_path == "/home/ec2-user/miniconda/bin/aws"
    assert spec.batch.allocation_strategy == "BEST_FIT_PROGRESSIVE" and spec.batch.spot_bid_percentage is None
    assert spec.nextflow.process == "demo_task"
    assert spec.storage.benchmarks == (tmp_path / "bench.csv").resolve()
    assert len(spec.spec_hash) == 64


def test_spec_hash_changes_with_benchmarks(tmp_path):
    from factory.spec import load_spec

    first = load_spec(write_spec(tmp_path, GOOD)).spec_hash
    (tmp_path / "bench.csv").write_text(BENCH + "8,2,8,4\n")
    assert load_spec(tmp_path / "demo-task.yaml").spec_hash != first


def test_help_lists_every_command(cli):
    import re

    result = cli("--help")
    assert result.exit_code == 0
    # A command's name opens its row of the help's command table (not merely a word in
    # another command's description, e.g. "register" in bake's).
    listed = set(re.findall(r"^\W*([a-z][a-z-]+)\s{2,}", result.output, re.M))
    for command in ("validate", "measure", "size", "render", "bake", "register", "plan", "nextflow-config", "prune", "iam-policy", "show", "status", "rollback", "local"):
        assert command in listed, f"{command} is not a row of `factory --help`: {sorted(listed)}"


def test_startup_does_not_import_heavy_modules():
    code = (
        "import sys, factory.cli\n"
        "from typer.testing import CliRunner\n"
        f"CliRunner().invoke(factory.cli.app, ['validate', {str(SPECS)!r}])\n"
        "heavy = [m for m in ('boto3', 'botocore', 'ansible', 'moto', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env={**os.environ})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"imported at start-up: {proc.stdout.strip()}"
