"""How fast the CLI starts: `factory --help` and `factory validate specs/`.

Goal (issue 3): `factory --help` well under half a second. Runs each command N times
as a fresh process and reports the median and the worst, plus which heavy modules the
start-up imported (there should be none).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FACTORY = Path(sys.executable).with_name("factory")
RUNS = 15


def timed(cmd: list[str]) -> list[float]:
    out = []
    for _ in range(RUNS):
        start = time.perf_counter()
        subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - start)
    return out


def hostile_specs() -> dict[str, float]:
    """Seconds `factory validate` takes to refuse each bad spec of the test suite (goal: < 1 s)."""
    import tempfile

    sys.path.insert(0, str(REPO))
    from tests.test_validate import BAD_SPECS, BENCH, BENCH_OVERRIDES, write_spec

    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for case, text, _ in BAD_SPECS:
            folder = Path(tmp) / case
            folder.mkdir()
            path = write_spec(folder, text, bench=BENCH_OVERRIDES.get(case, BENCH))
            start = time.perf_counter()
            subprocess.run([str(FACTORY), "validate", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            out[case] = round(time.perf_counter() - start, 3)
    return out


def main() -> int:
    results = {}
    for label, args in (("factory --help", ["--help"]), ("factory validate specs/", ["validate", "specs"])):
        times = timed([str(FACTORY), *args])
        results[label] = {"median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3), "runs": RUNS}
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, factory.cli; print([m for m in ('boto3','botocore','ansible','moto','matplotlib') if m in sys.modules])"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    results["heavy_modules_at_startup"] = probe.stdout.strip()
    hostile = hostile_specs()
    worst = max(hostile, key=hostile.get)
    results["bad_specs_refused"] = {"count": len(hostile), "max_s": hostile[worst], "slowest": worst, "each_s": hostile}
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "startup.json").write_text(json.dumps(results, indent=2) + "\n")
    print("CLI start-up")
    for label, r in results.items():
        if isinstance(r, dict) and "median_s" in r:
            flag = "ok" if r["median_s"] < 0.5 else "SLOW (goal < 0.5 s)"
            print(f"  {label:<26} median {r['median_s']:.3f} s  max {r['max_s']:.3f} s  ({r['runs']} runs)  {flag}")
    print(f"  heavy modules imported at start-up: {results['heavy_modules_at_startup']}")
    bad = results["bad_specs_refused"]
    flag = "ok" if bad["max_s"] < 1.0 else "SLOW (goal < 1 s)"
    print(f"  {bad['count']} bad specs refused (whole process); slowest {bad['slowest']}: {bad['max_s']:.3f} s  {flag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
