"""`factory size` end to end through the CLI: exit codes, messages, JSON, plots."""

from __future__ import annotations

import json

import pytest

from tests.conftest import SPECS

BENCH = SPECS / "benchmarks"


def no_traceback(result):
    assert "Traceback" not in (result.stdout + result.stderr)


def test_size_task_readable(cli):
    r = cli("size", "salmon-quant", "--specs-dir", SPECS)
    assert r.exit_code == 0, r.stderr
    for word in ("index", "scratch", "output", "container images", "per task", "headroom", "reserve",
                 "volume", "docker basesize", "monthly cost", "Fit", "R²"):
        assert word in r.stdout


def test_size_task_json_keys_and_price(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no factory.yaml here: its tier cap would change `tier`
    r = cli("size", "star-align", "--specs-dir", SPECS, "--json", "--price-per-gib", "0.1")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    for key in ("volume_gib", "per_task_gib", "docker_basesize_gib", "tier", "monthly_cost_usd"):
        assert key in data
    assert data["docker_basesize_gib"] is None
    assert data["tier"] == "star-align"  # alone in its tier without a cap (no factory.yaml here)
    assert data["monthly_cost_usd"] == pytest.approx(round(data["volume_gib"] * 0.1, 2))
    assert data["fit"]["components"]["scratch"]["model"] == "linear"


def test_size_task_overrides_concurrency(cli):
    one = json.loads(cli("size", "salmon-quant", "--specs-dir", SPECS, "--json", "--concurrency", "1").stdout)
    four = json.loads(cli("size", "salmon-quant", "--specs-dir", SPECS, "--json", "--concurrency", "4").stdout)
    assert four["volume_gib"] > one["volume_gib"]


def test_size_all_table_and_json(cli):
    r = cli("size", "--all", "--specs-dir", SPECS)
    assert r.exit_code == 0, r.stderr
    assert "Storage tiers" in r.stdout and "one size for everything" in r.stdout
    r = cli("size", "--all", "--specs-dir", SPECS, "--json", "--max-tiers", "5")
    data = json.loads(r.stdout)
    assert len(data["tiers"]) <= 5
    tasks = sorted(t for tier in data["tiers"] for t in tier["tasks"])
    assert tasks == sorted(p.stem for p in SPECS.glob("*.yaml"))
    for p in data["plans"]:
        assert p["tier"] is not None and p["tier_volume_gib"] >= p["volume_gib"]
    s = data["summary"]
    assert s["one_size_total_gib"] >= s["tiered_gib"] >= s["own_sizes_gib"]


def test_size_all_cap_below_groups(cli):
    r = cli("size", "--all", "--specs-dir", SPECS, "--max-tiers", "1")
    assert r.exit_code == 2
    assert "tier groups" in r.stderr and "Fix" in r.stderr
    no_traceback(r)


def test_adhoc_benchmarks(cli, tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text("input_gib,index_gib,scratch_gib,output_gib\n1,5,2,1\n2,5,4,2\n4,5,8,4\n")
    r = cli("size", "--benchmarks", csv, "--max-input-gib", "8", "--concurrency", "2", "--headroom", "0.1", "--json")
    assert r.exit_code == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["breakdown"]["concurrent_tasks"] == 2
    assert data["breakdown"]["headroom"] == 0.1
    assert data["task"] is None
    r = cli("size", "--benchmarks", csv, "--max-input-gib", "8", "--family", "al1", "--json")
    assert json.loads(r.stdout)["docker_basesize_gib"] >= 10


@pytest.mark.parametrize(
    "text, needle",
    [
        ("input_gib,index_gib,scratch_gib\n1,2,3\n", "missing column(s) output_gib"),
        ("input_gib,index_gib,scratch_gib,output_gib\n1,2,lots,4\n2,2,3,4\n", "column 'scratch_gib': 'lots' is not a number"),
        ("input_gib,index_gib,scratch_gib,output_gib\n1,2,3,4\n2,2,-3,4\n", "negative"),
        ("", "empty benchmark file"),
        ("input_gib,index_gib,scratch_gib,output_gib\n", "0 benchmark run(s)"),
        ("input_gib,index_gib,scratch_gib,output_gib\n1,2,3,4\n", "at least 2"),
    ],
)
def test_adhoc_bad_csv_is_a_clear_error(cli, tmp_path, text, needle):
    csv = tmp_path / "bad.csv"
    csv.write_text(text)
    r = cli("size", "--benchmarks", csv, "--max-input-gib", "10")
    assert r.exit_code == 1
    assert needle in r.stderr
    assert "bad.csv" in r.stderr
    no_traceback(r)


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--max-input-gib", "1e300"], "beyond one gp3 volume"),  # once an OverflowError traceback
        (["--max-input-gib", "16000"], "beyond gp3's limit of 16384"),
        (["--max-input-gib", "10", "--concurrency", "1" + "0" * 400], "too large to compute"),
    ],
)
def test_absurd_sizes_are_refused_without_traceback(cli, extra, needle):
    r = cli("size", "--benchmarks", BENCH / "star-align.csv", *extra)
    assert r.exit_code == 1, (r.stdout, r.stderr)
    assert needle in r.stderr
    no_traceback(r)


def test_beyond_gp3_refused(cli, tmp_path):
    csv = tmp_path / "runs.csv"
    csv.write_text("input_gib,index_gib,scratch_gib,output_gib\n1,0,10,1\n2,0,20,2\n3,0,30,3\n")
    r = cli("size", "--benchmarks", csv, "--max-input-gib", "1000", "--concurrency", "4")
    assert r.exit_code == 1
    assert "16384" in r.stderr and "lower" in r.stderr
    no_traceback(r)


@pytest.mark.parametrize(
    "args, needle",
    [
        ([], "give one of TASK, --all or --benchmarks"),
        (["salmon-quant", "--all"], "cannot be combined"),
        (["salmon-quant", "--max-tiers", "2"], "--max-tiers goes with --all"),
        (["--benchmarks", "x.csv"], "needs --max-input-gib"),
        (["--benchmarks", "missing.csv", "--max-input-gib", "3"], "no such file"),
        (["--benchmarks", str(BENCH / "star-align.csv"), "--max-input-gib", "-3"], "--max-input-gib must be"),
        (["--benchmarks", str(BENCH / "star-align.csv"), "--max-input-gib", "3", "--family", "al9"], "--family"),
        (["salmon-quant", "--concurrency", "0"], "--concurrency must be at least 1"),
        (["no-such-task"], "no spec for task 'no-such-task'"),
        (["salmon-quant", "--plot", "out.txt"], "ending in .png"),
        (["salmon-quant", "--price-per-gib", "inf"], "--price-per-gib must be"),
        (["salmon-quant", "--price-per-gib", "nan"], "--price-per-gib must be"),
        (["salmon-quant", "--headroom", "inf"], "--headroom must be"),
        (["--benchmarks", str(BENCH / "star-align.csv"), "--max-input-gib", "inf"], "--max-input-gib must be"),
        (["salmon-quant", "--plot", "/nonexistent-folder/x.png"], "does not exist"),
    ],
)
def test_usage_errors_exit_2(cli, args, needle):
    r = cli("size", *args, "--specs-dir", SPECS)
    assert r.exit_code == 2, (r.stdout, r.stderr)
    assert needle in r.stderr
    no_traceback(r)


def _colour_share(png, rgb, tol=0.08):
    """Fraction of the picture's pixels within `tol` of colour `rgb` (0..1 floats)."""
    import numpy as np
    from matplotlib import image

    pixels = image.imread(png)[..., :3]
    return float((np.abs(pixels - np.array(rgb)).max(axis=-1) < tol).mean()), pixels.shape


TAB_BLUE, TAB_RED = (0.122, 0.467, 0.706), (0.839, 0.153, 0.157)


def test_plot_writes_a_png_with_the_sizing_drawn(cli, tmp_path):
    out = tmp_path / "star.png"
    r = cli("size", "star-align", "--specs-dir", SPECS, "--plot", out)
    assert r.exit_code == 0, r.stderr
    assert f"plot: {out}" in r.stdout
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A real picture, not an empty canvas: 12x5 in at 130 dpi, with the fit (blue) and
    # the prediction bound and chosen size (red) drawn on it.
    blue, shape = _colour_share(out, TAB_BLUE)
    red, _ = _colour_share(out, TAB_RED)
    assert shape[:2] == (650, 1560)
    assert blue > 0.01 and red > 0.0005, (blue, red)
    out2 = tmp_path / "tiers.png"
    r = cli("size", "--all", "--specs-dir", SPECS, "--plot", out2)
    assert r.exit_code == 0, r.stderr
    assert out2.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _colour_share(out2, TAB_BLUE)[0] > 0.01


def test_plot_shows_runs_fit_bound_and_chosen_size():
    """What the picture says, read back from the figure: every benchmarked run, the fit
    and the bound at max_input_gib, the per-task size and the volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from factory.plot import plan_figure
    from factory.sizing import size_task
    from factory.spec import find_spec

    plan = size_task(find_spec("star-align", SPECS))
    fig = plan_figure(plan)
    try:
        ax, bx = fig.axes
        points = sorted(tuple(map(float, xy)) for c in ax.collections for xy in c.get_offsets()
                        if c.get_label().startswith("benchmarked runs"))
        assert points == sorted((r.input_gib, pytest.approx(r.footprint_gib)) for r in plan.records)
        lines = {line.get_label(): line for line in ax.get_lines()}
        fit = next(v for k, v in lines.items() if k.startswith("least squares fit"))
        bound = next(v for k, v in lines.items() if k.startswith("95% one-sided prediction bound"))
        x = plan.max_input_gib
        xs = list(bound.get_xdata())
        i = min(range(len(xs)), key=lambda j: abs(xs[j] - x))
        assert bound.get_ydata()[i] == pytest.approx(xs[i] + sum(f.upper(xs[i]) for f in plan.fits))
        assert fit.get_ydata()[i] == pytest.approx(xs[i] + sum(f.predict(xs[i]) for f in plan.fits))
        assert bound.get_ydata()[i] > fit.get_ydata()[i]
        assert xs[-1] >= x  # drawn up to (and past) the largest input sized for
        chosen = [c for c in ax.collections if c.get_label().startswith("sized per task")]
        assert [tuple(map(float, xy)) for xy in chosen[0].get_offsets()] == [(x, pytest.approx(plan.data_gib))]
        volume = [line for line in bx.get_lines() if line.get_label() == f"volume: {plan.volume_gib} GiB"]
        assert volume and volume[0].get_ydata()[0] == plan.volume_gib
        stacked = sum(p.get_height() for p in bx.patches)
        assert stacked == pytest.approx(plan.volume_gib)  # the bars add up to the volume
        assert f"{plan.volume_gib} GiB" in fig._suptitle.get_text()
    finally:
        plt.close(fig)


def test_size_does_not_import_matplotlib_without_plot(cli):
    import subprocess
    import sys

    code = (
        "import sys; from factory.cli import app; from typer.testing import CliRunner;"
        f"r = CliRunner().invoke(app, ['size', 'salmon-quant', '--specs-dir', {str(SPECS)!r}, '--json']);"
        "assert r.exit_code == 0, r.output; print('matplotlib' in sys.modules, 'numpy' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_size_task_reports_the_tier_register_would_use(cli, tmp_path, monkeypatch):
    """`size TASK --json` fills `tier` from the tiers over the task's folder, with factory.yaml's cap."""
    import shutil

    specs = tmp_path / "specs"
    shutil.copytree(SPECS, specs)
    (specs / "star-align-nvme.yaml").unlink()  # a tier group of its own (instance store): the cap below is for the EBS ones
    monkeypatch.chdir(tmp_path)
    alone = json.loads(cli("size", "salmon-index", "--specs-dir", specs, "--json").stdout)
    assert (alone["tier"], alone["tier_volume_gib"]) == ("salmon-index", alone["volume_gib"])

    (tmp_path / "factory.yaml").write_text("tiers:\n  max_tiers: 3\n")  # one tier a group (the GPU task is a group of its own)
    shared = json.loads(cli("size", "salmon-index", "--specs-dir", specs, "--json").stdout)
    star = json.loads(cli("size", "star-align", "--specs-dir", specs, "--json").stdout)
    assert shared["tier"] == star["tier"] == "star-align"
    assert shared["tier_volume_gib"] == star["volume_gib"] > shared["volume_gib"]
    table = cli("size", "--all", "--specs-dir", specs, "--json")
    assert len(json.loads(table.stdout)["tiers"]) == 3  # --all honours the same cap
