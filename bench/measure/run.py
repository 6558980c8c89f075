"""Measure benchmark: what a disk sample costs, and how close `factory measure`'s peak is to the truth.

1. Cost per sample. A container's writable layer is filled with N files (10 .. 50,000, a
   few MiB in all) and read three ways, each many times:
     walk        factory.disk_sampler.dir_bytes on overlay2's upper directory (what factory uses)
     inspect     `docker container inspect --size` (SizeRw: the engine walks the same directory)
     ps          `docker ps --size --filter id=...`
   The walk's cost divided by the sampling interval is the share of one core sampling
   would take; the sampler caps it at half a core (it pauses at least as long as a sample
   took), so past ~50% the samples spread out instead (max_gap_s says by how much).
2. Peak error. `factory.measure.measure` runs a container that writes 5 MiB of output,
   allocates S MiB of scratch at once (fallocate), holds it for H seconds, deletes it and
   exits; the true peak is input + index + output + scratch. H goes from 2 s down to below
   the sampling interval, where the limit shows (a spike shorter than the interval may be
   missed: the measured peak then falls to what the run held without it). The same with
   `--disk-reader engine` (SizeRw through the engine) for holds of 0.5 s and more.

Needs a Docker engine: the one DOCKER_HOST names, else a private dockerd it starts (root).
Writes bench/results/measure.{json,md}.

Run: .venv/bin/python bench/measure/run.py   (or `make bench`)
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from factory.disk_sampler import DEFAULT_INTERVAL_S, dir_bytes  # noqa: E402
from factory.local.docker_engine import DockerEngine, import_busybox_image  # noqa: E402
from factory.measure import MeasureRun, measure  # noqa: E402

IMAGE = "factory-measure-bench:busybox"
MIB = 1024**2
FILE_COUNTS = (10, 1_000, 10_000, 50_000)
SCRATCH_MIB = 256
HOLDS_S = {"layer": (2.0, 1.0, 0.5, 0.25, 0.1, 0.05), "engine": (2.0, 1.0, 0.5)}
REPEATS = 3  # runs per hold: below the interval, catching the spike is chance


def timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        out.append(time.perf_counter() - start)
    return out


def docker(env, *args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], env=env, capture_output=True, text=True, check=True, **kw)


def sample_costs(env: dict, tmp: Path) -> list[dict]:
    rows = []
    for n in FILE_COUNTS:
        tree = tmp / f"tree-{n}"
        tree.mkdir()
        per_dir = 1000
        for i in range(n):
            sub = tree / f"d{i // per_dir:03d}"
            if i % per_dir == 0:
                sub.mkdir()
            (sub / f"f{i:06d}").write_bytes(b"x" * 512)
        name = f"factory-measure-bench-{n}"
        docker(env, "create", "--name", name, "--network", "none", IMAGE, "true")
        try:
            docker(env, "cp", str(tree), f"{name}:/work/tree", timeout=600)
            info = json.loads(docker(env, "inspect", name).stdout)[0]
            upper = Path(info["GraphDriver"]["Data"]["UpperDir"])
            cid = info["Id"]
            runs = 20 if n <= 10_000 else 8
            walk = timed(lambda u=upper: dir_bytes([u]), runs)
            inspect = timed(lambda c=name: docker(env, "container", "inspect", "--size", "--format", "{{.SizeRw}}", c), max(3, runs // 2))
            ps = timed(lambda c=cid: docker(env, "ps", "--all", "--size", "--filter", f"id={c}", "--format", "{{.Size}}"), max(3, runs // 2))
            rows.append({
                "files": n,
                "layer_mib": round(dir_bytes([upper]) / MIB, 1),
                "walk_ms": round(statistics.median(walk) * 1000, 2),
                "inspect_size_ms": round(statistics.median(inspect) * 1000, 1),
                "ps_size_ms": round(statistics.median(ps) * 1000, 1),
                "walk_core_share_at_interval": round(statistics.median(walk) / DEFAULT_INTERVAL_S, 4),
            })
        finally:
            docker(env, "rm", "-f", "-v", name)
            subprocess.run(["rm", "-rf", str(tree)], check=True)
    return rows


def peak_errors(env: dict, tmp: Path) -> list[dict]:
    old = os.environ.get("DOCKER_HOST")
    if env.get("DOCKER_HOST"):
        os.environ["DOCKER_HOST"] = env["DOCKER_HOST"]
    try:
        inp = tmp / "reads.fq"
        inp.write_bytes(os.urandom(16 * MIB))
        idx = tmp / "index"
        idx.mkdir()
        (idx / "ref.idx").write_bytes(os.urandom(8 * MIB))
        rows = []
        truth = (16 + 8 + 5 + SCRATCH_MIB) * MIB
        for reader, hold in ((r, h) for r, holds in HOLDS_S.items() for h in holds):
            # fallocate holds the blocks at once, so the scratch is on disk for `hold` seconds
            # and no longer (dd would hold part of it while it writes, blurring the spike).
            script = (
                "dd if=/dev/zero of=result.out bs=1048576 count=5 2>/dev/null && "
                f"fallocate -l {SCRATCH_MIB}M /tmp/spill && sleep {hold} && rm /tmp/spill"
            )
            run = MeasureRun(image=IMAGE, command=("sh", "-c", script), inputs=(inp,), index=(idx,), disk_reader=reader)
            runs = [measure(run) for _ in range(REPEATS)]
            errors = [100 * (m.peak_bytes - truth) / truth for m in runs]
            rows.append({
                "disk_reader": reader,
                "hold_s": hold,
                "runs": REPEATS,
                "true_peak_mib": truth / MIB,
                "measured_peak_mib": [round(m.peak_bytes / MIB, 2) for m in runs],
                "worst_error_pct": round(max(errors, key=abs), 2),
                "caught": sum(abs(e) <= 3.0 for e in errors),
                "samples": round(statistics.mean(m.sampler.samples for m in runs), 1),
                "mean_sample_ms": round(statistics.mean(m.sampler.mean_cost_s for m in runs) * 1000, 3),
                "max_gap_s": round(max(m.sampler.max_gap_s for m in runs), 3),
            })
        return rows
    finally:
        if old is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = old


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="factory-bench-measure-") as tmp_name:
        tmp = Path(tmp_name)
        engine = DockerEngine.ensure(tmp / "engine")
        try:
            env = engine.env()
            import_busybox_image(IMAGE, env=env)
            costs = sample_costs(env, tmp)
            peaks = peak_errors(env, tmp)
            docker(env, "rmi", IMAGE)
        finally:
            engine.stop()

    result = {"interval_s": DEFAULT_INTERVAL_S, "sample_cost": costs, "peak": peaks}
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "measure.json").write_text(json.dumps(result, indent=2) + "\n")
    lines = [
        f"Sampling interval: {DEFAULT_INTERVAL_S} s",
        "",
        "| files in layer | layer MiB | walk ms (factory) | inspect --size ms | ps --size ms | walk / interval |",
        "| ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in costs:
        lines.append(
            f"| {r['files']} | {r['layer_mib']} | {r['walk_ms']} | {r['inspect_size_ms']} | {r['ps_size_ms']} | "
            f"{100 * r['walk_core_share_at_interval']:.2f}% |"
        )
    lines += [
        "",
        f"Peak error ({SCRATCH_MIB} MiB of scratch held for H s, plus 16 MiB input, 8 MiB index, 5 MiB output):",
        "",
        "| reader | hold s | true peak MiB | measured MiB (each run) | worst error | caught (within 3%) | samples/run | ms/sample | longest gap s |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in peaks:
        lines.append(
            f"| {r['disk_reader']} | {r['hold_s']} | {r['true_peak_mib']:.0f} | {', '.join(map(str, r['measured_peak_mib']))} | {r['worst_error_pct']:+.2f}% | "
            f"{r['caught']}/{r['runs']} | {r['samples']} | {r['mean_sample_ms']} | {r['max_gap_s']} |"
        )
    table = "\n".join(lines)
    (out_dir / "measure.md").write_text(table + "\n")
    print("factory measure: sampling cost and peak error")
    print(table)
    print(f"\nwrote {out_dir / 'measure.json'} and {out_dir / 'measure.md'}")
    worst = max(abs(r["worst_error_pct"]) for r in peaks if r["hold_s"] >= 1.0)
    if worst > 3.0:
        print(f"FAIL: a peak held for 1 s or more was measured {worst}% off", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
