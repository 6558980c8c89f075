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
    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "startup.json").write_text(json.dumps(results, indent=2) + "\n")
    print("CLI start-up")
    for label, r in results.items():
        if isinstance(r, dict):
            flag = "ok" if r["median_s"] < 0.5 else "SLOW (goal < 0.5 s)"
            print(f"  {label:<26} median {r['median_s']:.3f} s  max {r['max_s']:.3f} s  ({r['runs']} runs)  {flag}")
    print(f"  heavy modules imported at start-up: {results['heavy_modules_at_startup']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
