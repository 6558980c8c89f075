"""`factory size`: storage sizing (issue 4). Thin over factory.sizing, factory.tiers, factory.plot.

    factory size TASK                       one task's breakdown and fit quality
    factory size --all [--max-tiers N]      tiers across every spec, and their cost
    factory size --benchmarks FILE --max-input-gib X [--concurrency N] [--headroom F]
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Optional

import typer

from factory.cli.app import app
from factory.cli.common import DEFAULT_SPECS_DIR, handle_errors, print_json, stdout_console
from factory.errors import UsageError

EXAMPLES = (
    "factory size salmon-quant | factory size --all --max-tiers 3 | "
    "factory size --benchmarks runs.csv --max-input-gib 40"
)


@app.command()
@handle_errors
def size(
    task: Optional[str] = typer.Argument(None, help="Task name (specs/<task>.yaml) or a spec file."),
    all_specs: bool = typer.Option(False, "--all", help="Size every spec and choose storage tiers."),
    max_tiers: Optional[int] = typer.Option(None, "--max-tiers", help="With --all: at most N tiers in total (default: factory.yaml's tiers.max_tiers, else no cap)."),
    benchmarks: Optional[Path] = typer.Option(None, "--benchmarks", help="Size an ad-hoc workload from this benchmark CSV (no spec)."),
    max_input_gib: Optional[float] = typer.Option(None, "--max-input-gib", help="Largest input one task handles, GiB (with --benchmarks)."),
    concurrency: Optional[int] = typer.Option(None, "--concurrency", help="Tasks running at once on one instance (default 1, or the spec's)."),
    headroom: Optional[float] = typer.Option(None, "--headroom", help="Extra fraction on top of the need (default 0.2, or the spec's)."),
    images_gib: float = typer.Option(0.0, "--images-gib", help="Container images, GiB (with --benchmarks)."),
    family: str = typer.Option("al2023", "--family", help="AMI family al2023|al2|al1 (with --benchmarks; al1 = devicemapper)."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Also draw the sizing to FILE.png."),
    price_per_gib: float = typer.Option(0.08, "--price-per-gib", help="gp3 USD per GiB-month (default: us-east-1)."),
    specs_dir: Path = typer.Option(DEFAULT_SPECS_DIR, "--specs-dir", help="Folder of task specs."),
    json_output: bool = typer.Option(False, "--json", help="Print machine-readable JSON."),
) -> None:
    """Size EBS and Docker storage from benchmarked runs; choose storage tiers."""
    modes = [m for m, on in (("TASK", task is not None), ("--all", all_specs), ("--benchmarks", benchmarks is not None)) if on]
    if len(modes) != 1:
        what = "give one of" if not modes else f"{' and '.join(modes)} cannot be combined; give one of"
        raise UsageError(f"{what} TASK, --all or --benchmarks FILE (e.g. {EXAMPLES})")
    if max_tiers is not None and not all_specs:
        raise UsageError("--max-tiers goes with --all (e.g. factory size --all --max-tiers 2)")
    if max_input_gib is not None and benchmarks is None:
        raise UsageError("--max-input-gib goes with --benchmarks; a spec sets storage.max_input_gib")
    if all_specs and (concurrency is not None or headroom is not None):
        raise UsageError("--concurrency and --headroom size one task; with --all each spec's own values are used")
    if not (math.isfinite(price_per_gib) and price_per_gib >= 0):
        raise UsageError(f"--price-per-gib must be a number of USD >= 0 (got {price_per_gib})")
    if concurrency is not None and concurrency < 1:
        raise UsageError(f"--concurrency must be at least 1 (got {concurrency})")
    if headroom is not None and not (math.isfinite(headroom) and headroom >= 0):
        raise UsageError(f"--headroom must be a fraction >= 0, e.g. 0.2 (got {headroom})")

    if all_specs:
        _size_all(specs_dir, max_tiers, price_per_gib, plot, json_output)
        return

    from factory.sizing import load_benchmarks, size_task, size_workload

    if benchmarks is not None:
        if max_input_gib is None:
            raise UsageError(f"--benchmarks needs --max-input-gib X (e.g. factory size --benchmarks {benchmarks} --max-input-gib 40)")
        if not (math.isfinite(max_input_gib) and max_input_gib > 0):
            raise UsageError(f"--max-input-gib must be a number of GiB > 0 (got {max_input_gib})")
        from factory.families import FAMILIES

        if family not in FAMILIES:
            raise UsageError(f"--family {family!r}: expected one of {', '.join(FAMILIES)}")
        if not benchmarks.exists():
            raise UsageError(f"--benchmarks {benchmarks}: no such file")
        plan = size_workload(
            load_benchmarks(benchmarks),
            max_input_gib,
            concurrent_tasks=1 if concurrency is None else concurrency,
            headroom=0.2 if headroom is None else headroom,
            container_images_gib=images_gib,
            storage_driver=FAMILIES[family].storage_driver,
            family=family,
            benchmarks=str(benchmarks),
            price_per_gib_month=price_per_gib,
        )
    else:
        from factory.spec import find_spec

        spec = find_spec(task, specs_dir)
        overrides = {}
        if concurrency is not None:
            overrides["concurrent_tasks"] = concurrency
        if headroom is not None:
            overrides["headroom"] = headroom
        if overrides:
            spec = dataclasses.replace(spec, storage=dataclasses.replace(spec.storage, **overrides))
        plan = size_task(spec, price_per_gib_month=price_per_gib)
        if not overrides:
            plan = _with_folder_tier(spec, plan)

    if plot is not None:
        from factory.plot import plot_plan

        plot_plan(plan, plot)
    if json_output:
        data = plan.to_json()
        if plot is not None:
            data["plot"] = str(plot)
        print_json(data)
    else:
        _print_plan(plan, plot)


def _with_folder_tier(spec, plan):
    """The plan with the tier `register` would put the task in: tiers over every spec in
    the task's folder, capped by factory.yaml's `tiers.max_tiers`. Unchanged when a
    sibling spec is invalid (validate reports that)."""
    from factory.config import load_config
    from factory.errors import FactoryError
    from factory.spec import load_specs
    from factory.tiers import tier_of, tiers_for

    try:
        tiers, _ = tiers_for(load_specs([spec.path.parent]), load_config().max_tiers)
        tier = tier_of(spec.name, tiers)
    except (FactoryError, KeyError):
        return plan
    return plan.with_tier(tier.name, tier.volume_gib)


def _size_all(specs_dir: Path, max_tiers: Optional[int], price: float, plot: Optional[Path], json_output: bool) -> None:
    from factory.config import load_config
    from factory.spec import load_specs
    from factory.tiers import provisioned_gib, tier_of, tiers_for

    if max_tiers is None:  # the cap register uses, so the table shows what it will make
        max_tiers = load_config().max_tiers
    tiers, pairs = tiers_for(load_specs([specs_dir]), max_tiers, price_per_gib_month=price)
    plans = []
    for spec, plan in pairs:
        tier = tier_of(spec.name, tiers)
        plans.append(plan.with_tier(tier.name, tier.volume_gib))
    own = sum(p.volume_gib for p in plans)
    tiered = provisioned_gib(tiers)
    one_size = max(p.volume_gib for p in plans)
    one_total = one_size * len(plans)
    summary = {
        "tasks": len(plans),
        "tier_count": len(tiers),
        "max_tiers": max_tiers,
        "price_per_gib_month": price,
        "own_sizes_gib": own,
        "tiered_gib": tiered,
        "tiered_monthly_cost_usd": round(tiered * price, 2),
        "one_size_gib": one_size,
        "one_size_total_gib": one_total,
        "one_size_monthly_cost_usd": round(one_total * price, 2),
        "saving_vs_one_size_usd": round((one_total - tiered) * price, 2),
        "basis": "one instance per task, each with its tier's volume, for a month",
    }
    if plot is not None:
        from factory.plot import plot_tiers

        plot_tiers(plans, tiers, plot)
    if json_output:
        print_json({
            "tiers": [t.to_json() | {"monthly_cost_usd": round(t.volume_gib * price, 2)} for t in tiers],
            "plans": [p.to_json() for p in plans],
            "summary": summary,
            **({"plot": str(plot)} if plot is not None else {}),
        })
        return

    from rich.table import Table

    console = stdout_console()
    table = Table(title=f"Storage tiers ({len(tiers)}" + (f", cap {max_tiers})" if max_tiers else ", no cap)"))
    table.add_column("tier", no_wrap=True)
    table.add_column("volume GiB", justify="right")
    table.add_column("tasks")
    table.add_column("group")
    table.add_column("$/month each", justify="right")
    for t in tiers:
        g = t.group_dict
        table.add_row(
            t.name, str(t.volume_gib), ", ".join(t.tasks),
            f"{g['region']} {g['image.base']} {g['image.architecture']} {g['batch.provisioning']}",
            f"{t.volume_gib * price:.2f}",
        )
    console.print(table)
    tasks = Table(title="Tasks")
    for col, just in (("task", "left"), ("own GiB", "right"), ("tier", "left"), ("tier GiB", "right"), ("over", "right")):
        tasks.add_column(col, justify=just, no_wrap=True)
    for p in sorted(plans, key=lambda p: p.volume_gib):
        tasks.add_row(p.task, str(p.volume_gib), p.tier, str(p.tier_volume_gib), f"+{p.tier_volume_gib - p.volume_gib}")
    console.print(tasks)
    console.print(
        f"tiered: {tiered} GiB = ${tiered * price:.2f}/month; "
        f"one size for everything ({one_size} GiB x {len(plans)}): {one_total} GiB = ${one_total * price:.2f}/month; "
        f"each task at its own size: {own} GiB",
        highlight=False, markup=False,
    )
    console.print(f"(one instance per task for a month at ${price:g}/GiB-month)", highlight=False, markup=False)
    if plot is not None:
        console.print(f"plot: {plot}", highlight=False, markup=False, soft_wrap=True)  # a path is never broken across lines


def _print_plan(plan: Any, plot: Optional[Path]) -> None:
    from rich.table import Table

    console = stdout_console()
    title = f"factory size: {plan.task}" if plan.task else f"factory size: {plan.benchmarks}"
    table = Table(title=title, show_header=True)
    table.add_column("item", no_wrap=True)
    table.add_column("GiB", justify="right", no_wrap=True)
    table.add_column("how", overflow="fold")
    b = plan
    source = "95% prediction bound at max input" if b.source == "benchmarks" else "storage.footprint"
    rows = [
        ("input", b.max_input_gib, "storage.max_input_gib" if b.task else "--max-input-gib"),
        ("index", b.index_gib, source),
        ("scratch", b.scratch_gib, source),
        ("output", b.output_gib, source),
        ("task data", b.data_gib, f"input+index+scratch+output, >= largest run ({b.largest_benchmark_gib:.1f})"),
        ("container images", b.container_images_gib, "pulled once per instance"),
        ("per task", b.per_task_gib, "task data + images"),
        ("concurrency", None, f"x{b.concurrent_tasks} tasks at once"),
        ("need", b.need_gib, f"{b.concurrent_tasks} x task data + images"),
        ("headroom", b.headroom_gib, f"{b.headroom:.0%} of the need"),
        ("reserve", b.reserve_gib, "Docker's state + the pool's metadata (data volume)" if b.grows else f"OS + Docker ({b.storage_driver})"),
    ]
    for name, value, how in rows:
        table.add_row(name, "" if value is None else f"{value:.2f}", how)
    if b.grows:
        table.add_row(
            "data volume", str(b.volume_gib),
            f"Docker's own {b.grow_volume_type} volume, rounded up to whole GiB (the root volume stays the AMI's); 1..16384",
            style="bold",
        )
        table.add_row(
            "grows to", str(b.grow_max_gib),
            f"storage.grow.max_gib: the grow agent may add {b.grow_max_gib - b.volume_gib} GiB of encrypted volumes before the disk fills",
        )
    elif b.instance_store:
        table.add_row("instance store", f"{b.store_need_gib:.2f}",
                      "need + headroom + 1 GiB Docker state: Docker's data root on the NVMe store (storage.instance_store)", style="bold")
        for listed, store in b.stores:
            table.add_row(f"  {listed}", f"{store['usable_gib']:.2f}",
                          f"{store['type']}: {store['total_gb']} GB on {store['disks']} NVMe disk(s), less 1% for XFS: holds it")
        table.add_row("volume", str(b.volume_gib), f"root volume for the OS alone (reserve; AMI minimum {b.ami_min_gib})", style="bold")
        table.add_row("on EBS instead", str(b.ebs_volume_gib),
                      f"the root volume with Docker's data on it: ${b.ebs_volume_gib * b.price_per_gib_month:.2f}/month; "
                      f"the store saves ${(b.ebs_volume_gib - (b.tier_volume_gib or b.volume_gib)) * b.price_per_gib_month:.2f}/month per instance")
    else:
        table.add_row("volume", str(b.volume_gib), f"rounded up to whole GiB; AMI minimum {b.ami_min_gib}; gp3 1..16384", style="bold")
    table.add_row("docker basesize", "-" if b.docker_basesize_gib is None else str(b.docker_basesize_gib), b.docker_basesize_note)
    table.add_row("monthly cost", f"${b.monthly_cost_usd:.2f}", f"gp3 at ${b.price_per_gib_month:g}/GiB-month")
    console.print(table)
    if b.fits:
        fit = Table(title=f"Fit: least squares against input, {len(b.records)} runs")
        for col in ("component", "model", "slope", "intercept", "resid. sd", "R²", "bound @ max"):
            fit.add_column(col, justify="right" if col not in ("component", "model") else "left", no_wrap=True)
        for f in b.fits:
            fit.add_row(
                f.component, f.model, f"{f.slope:.4f}", f"{f.intercept:.3f}", f"{f.residual_sd:.3f}",
                "-" if f.r_squared is None else f"{f.r_squared:.4f}", f"{f.upper(b.max_input_gib):.2f}",
            )
        console.print(fit)
        q = b.fit_quality()
        if q["extrapolation_factor"]:
            console.print(
                f"largest benchmarked input {q['largest_benchmarked_input_gib']:g} GiB; "
                f"max_input_gib is {q['extrapolation_factor']:g}x that",
                highlight=False, markup=False,
            )
    for w in b.warnings:
        console.print(f"warning: {w}", style="yellow", highlight=False, markup=False)
    if plot is not None:
        console.print(f"plot: {plot}", highlight=False, markup=False, soft_wrap=True)  # a path is never broken across lines
