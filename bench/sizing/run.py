"""Sizing benchmark: does factory's model size volumes safely and tightly?

For each workload in bench/sizing/workloads/*.csv (its sources are in its comments):
the `bench` rows are what a user would have measured (the task's benchmark file); the
`prod` rows are the runs the pipeline later meets. Each strategy picks one volume per
workload; the workload *needs* its largest production run's footprint x concurrency, plus
the container images and the OS + Docker reserve.

Strategies:
  model       factory.sizing.size_workload on the bench rows at max_input_gib = the largest
              production input
  one-size    one volume for every workload: the largest the model picks for any of them
  fixed-100   100 GiB everywhere (a common default in genomics Batch setups)

Reports provisioned/needed per workload and strategy, the median ratio and the count of
under-provisioned workloads; writes bench/results/sizing.json and sizing.md.

Run: .venv/bin/python bench/sizing/run.py   (or `make bench`)
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))

from factory.families import FAMILIES  # noqa: E402
from factory.sizing import RESERVE_GIB, parse_benchmarks, size_workload  # noqa: E402

FIXED_GIB = 100


def load_workload(path: Path) -> dict:
    text = path.read_text()
    params: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# param:"):
            for item in line.removeprefix("# param:").split():
                key, _, value = item.partition("=")
                params[key] = value
    records = parse_benchmarks(text, source=str(path.relative_to(REPO)))
    role = lambda r: dict(r.extra).get("role")  # noqa: E731
    bench = [r for r in records if role(r) == "bench"]
    prod = [r for r in records if role(r) == "prod"]
    if not bench or not prod:
        raise SystemExit(f"{path}: needs rows with role=bench and role=prod")
    family = params.get("family", "al2023")
    return {
        "name": path.stem,
        "bench": bench,
        "prod": prod,
        "concurrency": int(params.get("concurrency", 1)),
        "headroom": float(params.get("headroom", 0.2)),
        "images_gib": float(params.get("images_gib", 0.0)),
        "family": family,
        "driver": FAMILIES[family].storage_driver,
    }


def main() -> int:
    workloads = [load_workload(p) for p in sorted((HERE / "workloads").glob("*.csv"))]
    rows = []
    for w in workloads:
        max_input = max(r.input_gib for r in w["prod"])
        plan = size_workload(
            w["bench"], max_input, concurrent_tasks=w["concurrency"], headroom=w["headroom"],
            container_images_gib=w["images_gib"], storage_driver=w["driver"], family=w["family"],
            task=w["name"],
        )
        worst = max(r.footprint_gib for r in w["prod"])
        needed = w["concurrency"] * worst + w["images_gib"] + RESERVE_GIB[w["driver"]]
        rows.append({"workload": w["name"], "max_input_gib": max_input, "needed_gib": round(needed, 2),
                     "model_gib": plan.volume_gib, "warnings": list(plan.warnings)})
    one_size = max(r["model_gib"] for r in rows)
    strategies = {"model": lambda r: r["model_gib"], "one-size": lambda r: one_size, "fixed-100": lambda r: FIXED_GIB}
    summary = {}
    for name, pick in strategies.items():
        ratios, under, total = [], 0, 0
        for r in rows:
            gib = pick(r)
            ratio = gib / r["needed_gib"]
            r[f"{name}_gib"] = gib
            r[f"{name}_ratio"] = round(ratio, 3)
            r[f"{name}_under"] = gib < r["needed_gib"]
            ratios.append(ratio)
            under += gib < r["needed_gib"]
            total += gib
        summary[name] = {
            "median_ratio": round(statistics.median(ratios), 3),
            "max_ratio": round(max(ratios), 3),
            "under_provisioned": under,
            "provisioned_gib": total,
        }
    summary["needed_gib"] = round(sum(r["needed_gib"] for r in rows), 2)

    out_dir = REPO / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "sizing.json").write_text(json.dumps({"workloads": rows, "summary": summary}, indent=2) + "\n")

    lines = [
        "| workload | needed GiB | model GiB (ratio) | one-size GiB (ratio) | fixed-100 (ratio) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cells = [r["workload"], f"{r['needed_gib']:.1f}"]
        for name in strategies:
            flag = " UNDER" if r[f"{name}_under"] else ""
            cells.append(f"{r[f'{name}_gib']} ({r[f'{name}_ratio']:.2f}){flag}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| strategy | median ratio | max ratio | under-provisioned | total GiB |")
    lines.append("| --- | ---: | ---: | ---: | ---: |")
    for name in strategies:
        s = summary[name]
        lines.append(f"| {name} | {s['median_ratio']:.2f} | {s['max_ratio']:.2f} | {s['under_provisioned']} of {len(rows)} | {s['provisioned_gib']} |")
    lines.append(f"\nneeded in total: {summary['needed_gib']:.1f} GiB")
    table = "\n".join(lines)
    (out_dir / "sizing.md").write_text("# Sizing benchmark\n\n" + table + "\n")
    print(table)
    print(f"\nwrote {out_dir / 'sizing.json'} and {out_dir / 'sizing.md'}")
    ok = summary["model"]["under_provisioned"] == 0
    if not ok:
        print("FAIL: the model under-provisioned a workload", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
