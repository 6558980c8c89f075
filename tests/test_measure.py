"""`factory measure` (issue 11): the disk sampler, the rows it writes, and runs on a real Docker engine.

The Docker tests run real containers of an image made with `docker import` from
busybox-static on the engine DOCKER_HOST names, or on a private dockerd the session
starts (tests/docker_fixtures.py). Each run writes a known number of bytes, so the row
can be checked against the truth.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from docker_fixtures import IMAGE, requires_docker

from factory.benchmark_rows import COLUMNS, append_row, existing_records
from factory.disk_sampler import Sampler, dir_bytes
from factory.errors import MeasureError, SizingError
from factory.sizing import load_benchmarks, parse_benchmarks, size_workload

MIB = 1024**2
GIB = 1024**3
FACTORY = Path(sys.executable).with_name("factory")

HAND_WRITTEN = """\
# Runs measured by hand with du.
sample,input_gib,index_gib,scratch_gib,output_gib,wall_s
s01,2.0,17.0,0.5,1.0,500
s02,4.0,17.0,0.9,2.0,900
"""


def write_bytes(path: Path, n: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(n))


# ---------------------------------------------------------------------------------------
# The sampler


def test_dir_bytes_counts_allocated_blocks_and_hard_links_once(tmp_path):
    write_bytes(tmp_path / "a", 3 * MIB)
    os.link(tmp_path / "a", tmp_path / "a-link")
    (tmp_path / "sub").mkdir()
    write_bytes(tmp_path / "sub" / "b", MIB)
    with open(tmp_path / "sparse", "wb") as f:  # 1 GiB long, nothing allocated
        f.truncate(GIB)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    total = dir_bytes([tmp_path])
    assert 4 * MIB <= total <= 4 * MIB + 64 * 1024
    assert dir_bytes([tmp_path / "missing"]) == 0


def test_sampler_catches_a_peak_held_for_one_second(tmp_path):
    def spill():
        time.sleep(0.3)
        write_bytes(tmp_path / "scratch", 8 * MIB)
        time.sleep(1.0)
        (tmp_path / "scratch").unlink()
        time.sleep(0.3)

    with Sampler(lambda: dir_bytes([tmp_path]), interval=0.25) as sampler:
        worker = threading.Thread(target=spill)
        worker.start()
        worker.join()
    stats = sampler.stats()
    assert stats.peak_bytes >= 8 * MIB
    assert sampler.last_bytes < MIB  # the scratch is gone again: the peak is not the end
    assert stats.samples >= 5 and stats.max_gap_s < 1.0 and stats.mean_cost_s > 0


def test_sampler_raises_what_the_reader_raised():
    def broken():
        raise OSError("the layer went away")

    sampler = Sampler(broken, interval=0.05).start()
    time.sleep(0.2)
    with pytest.raises(OSError, match="went away"):
        sampler.stop()


# ---------------------------------------------------------------------------------------
# Rows and the benchmark file


class FakeStats:
    samples, interval_s, mean_cost_s, max_gap_s = 10, 0.25, 0.001, 0.26


def row(input_gib=1.0, failed=False, **over):
    data = {
        "sample": "s", "input_gib": input_gib, "index_gib": 2.0, "scratch_gib": 0.5, "output_gib": 0.25,
        "peak_gib": input_gib + 2.75, "wall_s": 12.5, "exit_status": 1 if failed else 0, "failed": failed,
        "image": "salmon:1.10", "image_digest": "sha256:" + "a" * 64, "date": "2026-11-30T10:00:00Z",
    }
    data.update(over)
    return data


def test_new_file_gets_a_comment_and_the_header(tmp_path):
    path = tmp_path / "runs.csv"
    append_row(path, row(1.0), 0.25)
    append_row(path, row(3.0), 0.25)
    text = path.read_text()
    assert text.startswith("# Measured with `factory measure`")
    assert ",".join(COLUMNS) in text
    records = load_benchmarks(path)
    assert [r.input_gib for r in records] == [1.0, 3.0]
    assert dict(records[0].extra)["image_digest"] == "sha256:" + "a" * 64
    assert [p.name for p in tmp_path.iterdir()] == ["runs.csv"]  # no temporary file left


def test_appending_to_a_hand_written_file_adds_columns_and_keeps_the_rest(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text(HAND_WRITTEN)
    append_row(path, row(6.0), 0.25)
    lines = path.read_text().splitlines()
    assert lines[0] == "# Runs measured by hand with du."
    assert lines[1].startswith("sample,input_gib,index_gib,scratch_gib,output_gib,wall_s,peak_gib,exit_status,failed")
    assert lines[2] == "s01,2.0,17.0,0.5,1.0,500" + "," * (len(COLUMNS) - 6)
    records = load_benchmarks(path)
    assert [r.input_gib for r in records] == [2.0, 4.0, 6.0] and not any(r.failed for r in records)
    assert dict(records[2].extra)["wall_s"] == "12.5"


def test_failed_rows_are_kept_but_not_fitted(tmp_path):
    path = tmp_path / "runs.csv"
    for x in (1.0, 2.0, 3.0):
        append_row(path, row(x), 0.25)
    append_row(path, row(50.0, failed=True, scratch_gib=900.0), 0.25)
    records = load_benchmarks(path)
    assert [r.failed for r in records] == [False, False, False, True]
    plan = size_workload(records, 4.0)
    assert len(plan.records) == 3
    assert plan.largest_benchmark_gib < 10  # the failed run's 900 GiB scratch is no floor
    assert any("failed run(s)" in w and "left out of the fit" in w for w in plan.warnings)


def test_failed_column_must_say_yes_or_no():
    with pytest.raises(SizingError, match=r"runs.csv:2: column 'failed': 'maybe' is not yes or no"):
        parse_benchmarks("input_gib,index_gib,scratch_gib,output_gib,failed\n1,1,1,1,maybe\n", source="runs.csv")


def test_a_broken_file_is_refused_before_the_run(tmp_path):
    path = tmp_path / "runs.csv"
    path.write_text("input_gib,index_gib,scratch_gib,output_gib\n1,2,x,4\n")
    with pytest.raises(MeasureError, match=r"runs.csv:2: column 'scratch_gib'.*fix the file first"):
        existing_records(path)
    assert existing_records(tmp_path / "new.csv") == []


# ---------------------------------------------------------------------------------------
# Bad command lines (no Docker needed)


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--image", IMAGE, "--input", "in.bin", "--benchmarks", "r.csv"], "give the command to measure after --"),
        (["--image", IMAGE, "--input", "in.bin", "--", "true"], "give TASK (its storage.benchmarks gets the row) or --benchmarks FILE"),
        (["--image", IMAGE, "--input", "nope.bin", "--benchmarks", "r.csv", "--", "true"], "--input nope.bin: no such file or folder; fix the path"),
        (["--image", IMAGE, "--benchmarks", "r.csv", "--", "true"], "give at least one --input PATH"),
        (["--image", IMAGE, "--input", "in.bin", "--index", "d/in.bin", "--benchmarks", "r.csv", "--", "true"], "'in.bin' is already staged from in.bin"),
    ],
)
def test_bad_command_lines_are_one_clear_line(cli, tmp_path, monkeypatch, args, expected):
    monkeypatch.chdir(tmp_path)
    write_bytes(tmp_path / "in.bin", 10)
    (tmp_path / "d").mkdir()
    write_bytes(tmp_path / "d" / "in.bin", 10)
    result = cli("measure", *args)
    assert result.exit_code == 2
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "r.csv").exists()


def test_a_task_without_a_benchmark_file_is_told_what_to_add(cli, tmp_path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "specs" / "demo.yaml").write_text(
        "name: demo\ndescription: d\nstorage:\n  max_input_gib: 4\n  footprint: {index_gib: 1, scratch_gib: 1, output_gib: 1}\n"
    )
    write_bytes(tmp_path / "in.bin", 10)
    result = cli("measure", "demo", "--specs-dir", tmp_path / "specs", "--image", IMAGE, "--input", tmp_path / "in.bin", "--", "true")
    assert result.exit_code == 2
    assert "storage.benchmarks: not set" in result.stderr and "storage.benchmarks: benchmarks/demo.csv" in result.stderr


def test_no_engine_is_a_clear_error(cli, tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-engine.sock")
    write_bytes(tmp_path / "in.bin", 10)
    result = cli("measure", "--image", IMAGE, "--input", tmp_path / "in.bin", "--benchmarks", tmp_path / "r.csv", "--", "true")
    assert result.exit_code == 1
    assert f"no Docker engine answers at unix://{tmp_path}/no-engine.sock" in result.stderr
    assert "set DOCKER_HOST" in result.stderr and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------------------------
# Real runs


def _containers(env) -> list[str]:
    out = subprocess.run(["docker", "ps", "--all", "--quiet", "--filter", "label=factory.measure"], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


def _volumes(env) -> list[str]:
    return subprocess.run(["docker", "volume", "ls", "--quiet"], env=env, capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture
def staged(tmp_path):
    """A 6 MiB input file and a 4 MiB index folder (two files)."""
    write_bytes(tmp_path / "reads.fq", 6 * MIB)
    (tmp_path / "ref").mkdir()
    write_bytes(tmp_path / "ref" / "a.idx", 3 * MIB)
    write_bytes(tmp_path / "ref" / "b.idx", MIB)
    return tmp_path


# Writes 5 MiB of output in the working directory, then spills 40 MiB of scratch outside
# it (/tmp), holds it for 1.5 s, deletes it and exits: the peak is input + index + 45 MiB.
SPILL = (
    "dd if=/dev/urandom of=result.out bs=1048576 count=5 2>/dev/null && "
    "dd if=/dev/urandom of=/tmp/spill bs=1048576 count=40 2>/dev/null && sync && sleep 1.5 && rm /tmp/spill && "
    "echo finished"
)


def _close(measured: float, truth_bytes: int, rel: float = 0.03) -> bool:
    """Within `rel` of the truth, plus 64 KiB for directory blocks."""
    return abs(measured * GIB - truth_bytes) <= rel * truth_bytes + 64 * 1024


@requires_docker
def test_measured_row_matches_the_known_truth(cli, docker_env, staged):
    bench = staged / "runs.csv"
    result = cli(
        "measure", "--image", IMAGE, "--input", staged / "reads.fq", "--index", staged / "ref",
        "--benchmarks", bench, "--json", "--", "sh", "-c", SPILL,
    )
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout)  # nothing but the row on stdout
    assert set(got) == set(COLUMNS)
    assert _close(got["input_gib"], 6 * MIB)
    assert _close(got["index_gib"], 4 * MIB)
    assert _close(got["output_gib"], 5 * MIB)
    assert _close(got["scratch_gib"], 40 * MIB)
    assert _close(got["peak_gib"], 55 * MIB)
    assert got["peak_gib"] == pytest.approx(got["input_gib"] + got["index_gib"] + got["scratch_gib"] + got["output_gib"], abs=1e-6)
    assert got["exit_status"] == 0 and got["failed"] is False and got["disk_reader"] == "layer"
    assert got["image_digest"].startswith("sha256:") and got["wall_s"] >= 1.5
    records = load_benchmarks(bench)
    assert len(records) == 1 and records[0].footprint_gib == pytest.approx(got["peak_gib"], abs=1e-6)
    assert _containers(docker_env) == []


@requires_docker
def test_read_through_the_engine_matches_the_truth_too(cli, docker_env, staged):
    """--disk-reader engine (for an engine whose layer this machine cannot read): SizeRw samples, outputs by docker cp."""
    result = cli(
        "measure", "--image", IMAGE, "--input", staged / "reads.fq", "--index", staged / "ref", "--disk-reader", "engine",
        "--benchmarks", staged / "runs.csv", "--json", "--", "sh", "-c", SPILL,
    )
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout)
    assert got["disk_reader"] == "engine"
    assert _close(got["input_gib"], 6 * MIB) and _close(got["index_gib"], 4 * MIB)
    assert _close(got["output_gib"], 5 * MIB) and _close(got["scratch_gib"], 40 * MIB)
    assert "read the container's disk through the engine (as asked)" in result.stderr
    assert _containers(docker_env) == []


@requires_docker
def test_a_failing_command_is_refused_and_cleaned_up(cli, docker_env, staged):
    bench = staged / "runs.csv"
    volumes = _volumes(docker_env)
    args = ("measure", "--image", IMAGE, "--input", staged / "reads.fq", "--benchmarks", bench, "--",
            "sh", "-c", "dd if=/dev/zero of=/tmp/x bs=1048576 count=3 2>/dev/null; echo out of luck >&2; exit 3")
    result = cli(*args)
    assert result.exit_code == 1
    assert "the command exited with status 3; no row written" in result.stderr and "--keep-failed" in result.stderr
    assert "out of luck" in result.stderr
    assert not bench.exists()
    assert _containers(docker_env) == [] and _volumes(docker_env) == volumes

    kept = cli(*args[:1], "--keep-failed", *args[1:])
    assert kept.exit_code == 0, kept.stderr
    records = load_benchmarks(bench)
    assert len(records) == 1 and records[0].failed and dict(records[0].extra)["exit_status"] == "3"
    assert _containers(docker_env) == []


@requires_docker
def test_a_command_missing_from_the_image_is_a_clear_error(cli, docker_env, staged):
    result = cli("measure", "--image", IMAGE, "--input", staged / "reads.fq", "--benchmarks", staged / "r.csv", "--", "salmon", "quant")
    assert result.exit_code == 1
    assert f"the command could not start in {IMAGE}" in result.stderr and "check that 'salmon' exists in the image" in result.stderr
    assert not (staged / "r.csv").exists() and _containers(docker_env) == []


@requires_docker
def test_missing_image_is_a_clear_error(cli, docker_env, staged):
    result = cli("measure", "--image", "no-such-image:1", "--input", staged / "reads.fq", "--benchmarks", staged / "r.csv", "--", "true")
    assert result.exit_code == 1
    assert "image no-such-image:1 is not on the Docker engine" in result.stderr and "docker pull no-such-image:1" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert _containers(docker_env) == []


@requires_docker
@pytest.mark.parametrize(
    ("sig", "group"),
    [(signal.SIGINT, False), (signal.SIGINT, True), (signal.SIGTERM, False)],
    ids=["ctrl-c-to-factory", "ctrl-c-to-its-process-group-as-a-terminal-sends", "sigterm"],
)
def test_interrupted_run_leaves_nothing_behind(docker_env, staged, sig, group):
    volumes = _volumes(docker_env)
    bench = staged / "runs.csv"
    proc = subprocess.Popen(
        [str(FACTORY), "measure", "--image", IMAGE, "--input", str(staged / "reads.fq"), "--index", str(staged / "ref"),
         "--benchmarks", str(bench), "--", "sh", "-c", "dd if=/dev/zero of=/tmp/x bs=1048576 count=8 2>/dev/null; sleep 120"],
        env=docker_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=group,
    )
    try:
        layer = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and layer is None:  # wait until COMMAND runs
            for cid in _containers(docker_env):
                info = json.loads(subprocess.run(["docker", "inspect", cid], env=docker_env, capture_output=True, text=True).stdout)[0]
                if info["State"]["Running"]:
                    layer = Path(info["GraphDriver"]["Data"]["UpperDir"])
            time.sleep(0.2)
        assert layer is not None and (layer / "work" / "reads.fq").exists()  # staged in the writable layer
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and "interrupted" in err
    assert _containers(docker_env) == []
    assert not layer.exists()  # the staged copy went with the container
    assert _volumes(docker_env) == volumes
    assert not bench.exists()


@requires_docker
def test_a_container_left_by_a_killed_run_is_removed_by_the_next(cli, docker_env, staged):
    dead = subprocess.Popen(["true"])
    dead.wait()
    subprocess.run(
        ["docker", "create", "--name", "factory-measure-leftover", "--label", f"factory.measure={os.uname().nodename}:{dead.pid}", IMAGE, "true"],
        env=docker_env, check=True, capture_output=True,
    )
    result = cli("measure", "--image", IMAGE, "--input", staged / "reads.fq", "--benchmarks", staged / "r.csv", "--", "true")
    assert result.exit_code == 0, result.stderr
    assert _containers(docker_env) == []


@requires_docker
def test_with_a_task_the_row_joins_its_benchmarks_and_size_and_validate_accept_it(cli, docker_env, staged):
    specs = staged / "specs"
    (specs / "benchmarks").mkdir(parents=True)
    (specs / "demo.yaml").write_text("name: demo\ndescription: a measured task\nstorage:\n  benchmarks: benchmarks/demo.csv\n  max_input_gib: 0.01\n")
    (specs / "benchmarks" / "demo.csv").write_text(
        "# two runs measured by hand\nsample,input_gib,index_gib,scratch_gib,output_gib\n"
        "a,0.001,0.004,0.01,0.001\nb,0.003,0.004,0.02,0.002\n"
    )
    (staged / "s07.fq").symlink_to(staged / "reads.fq")  # staged under the link's name, with the target's bytes
    result = cli(
        "measure", "demo", "--specs-dir", specs, "--image", IMAGE, "--input", staged / "s07.fq", "--index", staged / "ref",
        "--", "sh", "-c", SPILL + " && ls -l s07.fq",
    )
    assert result.exit_code == 0, result.stderr
    assert "demo: volume 30 GiB -> 30 GiB" in result.stdout  # the AMI's 30 GiB floor at this scale
    assert "outside the benchmarked input range 0.001..0.003 GiB" in result.stderr
    assert "the largest run so far" in result.stderr
    assert "finished" in result.stderr  # COMMAND's own output goes to stderr
    assert "-rw" in result.stderr and " s07.fq" in result.stderr  # a regular file in the container
    records = load_benchmarks(specs / "benchmarks" / "demo.csv")
    assert len(records) == 3 and dict(records[2].extra)["image"] == IMAGE and dict(records[2].extra)["sample"] == "s07.fq"
    assert _close(records[2].input_gib, 6 * MIB)
    assert cli("validate", specs).exit_code == 0
    sized = cli("size", "demo", "--specs-dir", specs, "--json")
    assert sized.exit_code == 0, sized.stderr
    assert json.loads(sized.stdout)["fit"]["records"] == 3


@requires_docker
def test_writes_outside_the_working_directory_count_and_anonymous_volumes_go(cli, docker_env, staged):
    """An image declaring VOLUME /data: what the command holds there is scratch too, and the volume is removed."""
    from factory.local.docker_engine import import_busybox_image

    image = "factory-measure-test:volume"
    import_busybox_image(image, env=docker_env, changes=("VOLUME /data",))
    volumes = _volumes(docker_env)
    script = (
        "dd if=/dev/urandom of=/data/spill bs=1048576 count=12 2>/dev/null && sleep 1.2 && rm /data/spill && "
        "dd if=/dev/urandom of=out.bin bs=1048576 count=2 2>/dev/null && pwd"
    )
    result = cli(
        "measure", "--image", image, "--input", staged / "reads.fq", "--workdir", "/scratch/task",
        "--benchmarks", staged / "r.csv", "--json", "--", "sh", "-c", script,
    )
    assert result.exit_code == 0, result.stderr
    got = json.loads(result.stdout)
    assert _close(got["input_gib"], 6 * MIB) and _close(got["output_gib"], 2 * MIB)
    # The peak held input + 12 MiB; the 2 MiB output came after, so scratch is 12 - 2 (docs/sizing.md).
    assert _close(got["peak_gib"], 18 * MIB) and _close(got["scratch_gib"], 10 * MIB)
    assert _volumes(docker_env) == volumes and _containers(docker_env) == []
    subprocess.run(["docker", "rmi", image], env=docker_env, capture_output=True, check=True)


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"GraphDriver": {"Name": "vfs", "Data": {}}}, "stores containers with the vfs storage driver"),
        ({"GraphDriver": {"Name": "overlay2", "Data": {"UpperDir": "/nonexistent/upper"}}}, "is not on this machine"),
    ],
)
def test_a_layer_it_cannot_read_is_a_clear_error(info, expected):
    from factory.measure import _writable_layer

    with pytest.raises(MeasureError, match=expected):
        _writable_layer(info, "tcp://docker.example:2376")


def test_validate_counts_only_good_runs(cli, tmp_path):
    (tmp_path / "demo.yaml").write_text("name: demo\ndescription: d\nstorage:\n  benchmarks: runs.csv\n  max_input_gib: 4\n")
    append_row(tmp_path / "runs.csv", row(1.0), 0.25)
    append_row(tmp_path / "runs.csv", row(2.0, failed=True), 0.25)
    result = cli("validate", tmp_path / "demo.yaml")
    assert result.exit_code == 1
    assert "has 1 measured run(s) (and 1 failed, not fitted); add at least 2 rows" in result.stdout
    append_row(tmp_path / "runs.csv", row(3.0), 0.25)
    assert cli("validate", tmp_path / "demo.yaml").exit_code == 0
    sized = cli("size", tmp_path / "demo.yaml", "--json")
    assert sized.exit_code == 0, sized.stderr
    plan = json.loads(sized.stdout)
    assert plan["fit"]["records"] == 2 and any("1 failed run(s)" in w for w in plan["warnings"])
