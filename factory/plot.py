"""`factory size --plot FILE.png`: the sizing in one picture for a design review.

matplotlib is imported inside the functions (Agg backend, no display needed), so
`factory --help` never pays for it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from factory.errors import UsageError
from factory.sizing import CONFIDENCE


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise UsageError(
            "--plot needs matplotlib, which is not installed; run `pip install 'factory[plot]'` "
            "(or `.venv/bin/pip install matplotlib`)"
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _check_target(path: Path) -> Path:
    path = Path(path)
    if path.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError(f"--plot {path}: give a file ending in .png (or .svg, .pdf)")
    if not path.parent.exists():
        raise UsageError(f"--plot {path}: folder {path.parent} does not exist")
    return path


def _save(fig: Any, path: Path) -> None:
    try:
        fig.savefig(path, dpi=130)
    except OSError as exc:
        raise UsageError(f"--plot {path}: cannot write: {exc.strerror or exc}") from None


def plot_plan(plan: Any, path: Path | str) -> Path:
    """Benchmark points, the fit, the prediction bound and the chosen size of one plan."""
    path = _check_target(Path(path))
    plt = _pyplot()
    fig = plan_figure(plan)
    _save(fig, path)
    plt.close(fig)
    return path


def plan_figure(plan: Any) -> Any:
    """The matplotlib Figure `plot_plan` saves: left, one task's data against input (runs,
    fit, bound, the size chosen at max_input_gib); right, how the volume is built up."""
    plt = _pyplot()
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 5), gridspec_kw={"width_ratios": [3, 2]})
    title = plan.task or "ad-hoc workload"
    fig.suptitle(f"factory size: {title} -> {plan.volume_gib} GiB gp3"
                 + (f" (tier {plan.tier})" if plan.tier else ""))

    # Left: one task's data (input + index + scratch + output) against input.
    x_max = plan.max_input_gib
    if plan.records:
        x_max = max(x_max, max(r.input_gib for r in plan.records))
        ax.scatter([r.input_gib for r in plan.records], [r.footprint_gib for r in plan.records],
                   color="black", zorder=3, label="benchmarked runs (footprint)")
    if plan.fits:
        steps = 200
        xs = [x_max * 1.05 * i / steps for i in range(steps + 1)]
        mean = [x + sum(f.predict(x) for f in plan.fits) for x in xs]
        upper = [x + sum(f.upper(x) for f in plan.fits) for x in xs]
        ax.plot(xs, mean, color="tab:blue", label="least squares fit (sum of components)")
        conf = int(round(100 * CONFIDENCE))
        ax.plot(xs, upper, color="tab:red", linestyle="--", label=f"{conf}% one-sided prediction bound")
        ax.fill_between(xs, mean, upper, color="tab:red", alpha=0.08)
    else:
        ax.text(0.5, 0.9, "sized from storage.footprint (fewer than 2 runs)", transform=ax.transAxes,
                ha="center")
    ax.axvline(plan.max_input_gib, color="grey", linestyle=":", label=f"max_input_gib = {plan.max_input_gib:g}")
    ax.scatter([plan.max_input_gib], [plan.data_gib], color="tab:red", marker="D", zorder=4,
               label=f"sized per task: {plan.data_gib:.1f} GiB")
    ax.set_xlabel("input (GiB)")
    ax.set_ylabel("one task's data on disk (GiB)")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)

    # Right: how the volume is built up.
    parts = [
        (f"{plan.concurrent_tasks} x task data", plan.concurrent_tasks * plan.data_gib, "tab:blue"),
        ("container images", plan.container_images_gib, "tab:purple"),
        (f"headroom {plan.headroom:.0%}", plan.headroom_gib, "tab:orange"),
        ("OS + Docker reserve", plan.reserve_gib, "tab:grey"),
    ]
    bottom = 0.0
    for label, value, color in parts:
        bx.bar(["volume"], [value], bottom=bottom, color=color, label=f"{label}: {value:.1f}")
        bottom += value
    rounding = plan.volume_gib - bottom
    if rounding > 0:
        bx.bar(["volume"], [rounding], bottom=bottom, color="white", edgecolor="black", hatch="//",
               label=f"round up / AMI minimum: {rounding:.1f}")
    bx.axhline(plan.volume_gib, color="tab:red", label=f"volume: {plan.volume_gib} GiB")
    if plan.tier_volume_gib and plan.tier_volume_gib != plan.volume_gib:
        bx.axhline(plan.tier_volume_gib, color="tab:green", linestyle="--",
                   label=f"tier {plan.tier}: {plan.tier_volume_gib} GiB")
    if plan.docker_basesize_gib is not None:
        bx.axhline(plan.docker_basesize_gib, color="black", linestyle=":",
                   label=f"dm.basesize: {plan.docker_basesize_gib} GiB")
    bx.set_ylabel("GiB")
    bx.set_title(f"\\${plan.monthly_cost_usd:.2f}/month at \\${plan.price_per_gib_month:g}/GiB-month (gp3)", fontsize=10)
    bx.legend(loc="lower right", fontsize=8)
    bx.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def plot_tiers(plans: Sequence[Any], tiers: Sequence[Any], path: Path | str) -> Path:
    """Each task's own volume beside its tier's volume."""
    path = _check_target(Path(path))
    plt = _pyplot()
    by_task = {p.task: p for p in plans}
    order = sorted(by_task, key=lambda t: by_task[t].volume_gib)
    tier_vol = {t: tier.volume_gib for tier in tiers for t in tier.tasks}
    tier_name = {t: tier.name for tier in tiers for t in tier.tasks}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(order) + 2), 5))
    idx = range(len(order))
    ax.bar([i - 0.2 for i in idx], [by_task[t].volume_gib for t in order], width=0.4, label="task's own size")
    ax.bar([i + 0.2 for i in idx], [tier_vol[t] for t in order], width=0.4, label="tier volume")
    for i, t in zip(idx, order):
        ax.text(i + 0.2, tier_vol[t], tier_name[t], ha="center", va="bottom", fontsize=8)
    ax.set_xticks(list(idx))
    ax.set_xticklabels(order, rotation=20, ha="right")
    ax.set_ylabel("GiB")
    ax.set_title(f"factory size --all: {len(tiers)} tier(s)")
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return path
