"""Right-sized storage: from benchmarked runs to one EBS volume size (and Docker's basesize).

The arithmetic, in the order it is applied (docs/sizing.md explains each step):

1. Read the task's benchmark CSV: one row per measured run, columns
   `input_gib,index_gib,scratch_gib,output_gib` (extra columns are kept and ignored,
   lines starting with `#` are comments; a row whose `failed` column says yes is kept
   but left out of the fit).
2. For each of index, scratch and output, fit ordinary least squares `y = a + b*input`
   and take the one-sided 95% *prediction* bound at the spec's `max_input_gib` (a new
   run's value, not the mean's, is what must fit on disk). A negative slope is treated
   as noise (refit as a constant): storage never shrinks as input grows. The bound is
   made monotone in input (`max(U(0), U(x))`, U is convex) and never below a benchmarked
   run at a smaller or equal input.
3. Per task: input + index + scratch + output (bounds), never below the largest
   benchmarked run's footprint; plus the container images.
4. Per instance: `concurrent_tasks` x the task's data, plus the images once (Docker pulls
   an image once per host; concurrent copies share its layers), times `1 + headroom`,
   plus a reserve for the OS and Docker, rounded up to whole GiB, never below the AMI's
   own volume, and inside gp3's 1 GiB..16 TiB.
5. devicemapper (ecs-al1) limits each container to `dm.basesize`: one task's data and
   image, with headroom, rounded up. overlay2 has no per-container limit: basesize None.

Pure Python and light imports: `factory size` and `factory validate` import this module.
"""

from __future__ import annotations

import csv
import functools
import io
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

from factory.errors import SizingError
from factory.families import FAMILIES

REQUIRED_COLUMNS = ("input_gib", "index_gib", "scratch_gib", "output_gib")
# Optional column: a run that failed (`factory measure --keep-failed` writes `yes`) is kept
# in the file, as a record of what happened, but left out of the fit.
FAILED_COLUMN = "failed"
FAILED_VALUES = {"": False, "no": False, "false": False, "0": False, "yes": True, "true": True, "1": True}
COMPONENTS = ("index", "scratch", "output")

# One-sided confidence of the prediction bound: a new run at max_input_gib needs more
# than the bound with probability about 5% if the linear model holds; headroom covers
# the rest.
CONFIDENCE = 0.95

# gp3 volume size limits (EBS user guide, "Amazon EBS volume types": 1 GiB - 16 TiB).
GP3_MIN_GIB = 1
GP3_MAX_GIB = 16 * 1024

# gp3 storage price, us-east-1, USD per GiB-month (aws.amazon.com/ebs/pricing).
DEFAULT_PRICE_PER_GIB_MONTH = 0.08

# What the sized device must hold besides the tasks' data, per storage driver.
# overlay2 (al2023, al2): the sized device is the root volume, which also holds the OS,
#   the ECS agent and its image, Docker's own state and logs: about 3 GiB used on a fresh
#   ECS-optimized AL2023 instance; 5 GiB leaves room for logs and agent updates.
# devicemapper (al1): the sized device is Docker's own volume (/dev/xvdcz, the OS has its
#   own root volume); the reserve covers the thin pool's metadata and the ECS agent image.
RESERVE_GIB = {"overlay2": 5.0, "devicemapper": 2.0}
# What a fresh ECS-optimized AL2023 instance uses of its root volume (the 3 GiB above);
# `factory local run` takes it from the root volume's stand-in before the task starts.
BASE_ROOT_USED_GIB = 3.0

# With `storage.grow` the sized device is Docker's own data volume (the OS stays on the
# base's root volume): it holds Docker's state, the ECS agent's image and the pool's own
# metadata (XFS log and inodes, or btrfs's metadata chunks), about 1% of the volume
# (mkfs.xfs's log and inode reservations; btrfs's default metadata chunk), so 1 GiB.
GROW_RESERVE_GIB = 1.0

# The smallest volume the AMI allows: a launch template cannot shrink a volume below its
# snapshot. The ECS-optimized AL2023 and AL2 AMIs boot from a 30 GiB root snapshot; AL1's
# Docker volume is an empty 22 GiB mapping that any size may replace.

# devicemapper's default dm.basesize is 10 GiB; factory never sets it lower.
DOCKER_DEFAULT_BASESIZE_GIB = 10

# Extrapolating further than this multiple of the largest benchmarked input adds a warning.
EXTRAPOLATION_WARN_FACTOR = 2.0

MAX_CSV_BYTES = 5 * 1024 * 1024


# ---------------------------------------------------------------------------------------
# Benchmark records


@dataclass(frozen=True)
class BenchmarkRecord:
    """One measured run. `line` is the 1-based line in the CSV; `extra` the other columns."""

    input_gib: float
    index_gib: float
    scratch_gib: float
    output_gib: float
    line: int = 0
    extra: tuple[tuple[str, str], ...] = ()
    failed: bool = False  # the `failed` column said yes: kept, never fitted

    @property
    def footprint_gib(self) -> float:
        """Everything the run had on disk at its peak: input, index, scratch and output."""
        return self.input_gib + self.index_gib + self.scratch_gib + self.output_gib

    def value(self, component: str) -> float:
        return getattr(self, f"{component}_gib")


def load_benchmarks(path: Path | str) -> list[BenchmarkRecord]:
    """Read a benchmark CSV. Every problem raises SizingError naming file, line and column."""
    path = Path(path)
    try:
        if path.is_dir():
            raise SizingError(f"{path}: is a directory; storage.benchmarks must name a CSV file")
        size = path.stat().st_size
        if size > MAX_CSV_BYTES:
            raise SizingError(
                f"{path}: {size} bytes is too large for a benchmark file (limit {MAX_CSV_BYTES}); "
                "keep one row per measured run"
            )
        raw = path.read_bytes()
    except FileNotFoundError:
        raise SizingError(
            f"{path}: benchmark file not found; create it (header: {','.join(REQUIRED_COLUMNS)}) "
            "or fix storage.benchmarks in the spec"
        ) from None
    except PermissionError:
        raise SizingError(f"{path}: benchmark file is not readable (permission denied)") from None
    except OSError as exc:
        raise SizingError(f"{path}: cannot read benchmark file: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SizingError(
            f"{path}: not UTF-8 text (byte {exc.start}); a benchmark file is a plain CSV"
        ) from None
    if "\x00" in text:
        raise SizingError(f"{path}: contains NUL bytes; a benchmark file is a plain CSV")
    return parse_benchmarks(text, source=str(path))


def parse_benchmarks(text: str, source: str = "<benchmarks>") -> list[BenchmarkRecord]:
    """Parse benchmark CSV text; `source` names the file in error messages."""
    numbered = [
        (n, line)
        for n, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise SizingError(
            f"{source}: empty benchmark file; the first line must be the header "
            f"{','.join(REQUIRED_COLUMNS)} followed by one row per measured run"
        )
    rows = list(csv.reader(io.StringIO("\n".join(line for _, line in numbered))))
    if len(rows) != len(numbered):
        raise SizingError(f"{source}: a quoted field spans lines; keep one run per line")
    header_line = numbered[0][0]
    header = [h.strip() for h in rows[0]]
    seen: set[str] = set()
    for name in header:
        if name in seen:
            raise SizingError(f"{source}:{header_line}: column '{name}' appears twice in the header")
        seen.add(name)
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if missing:
        hint = ""
        lowered = {h.lower(): h for h in header}
        for m in missing:
            if m in lowered:
                hint = f" (column names are lower case: '{lowered[m]}' -> '{m}')"
                break
        raise SizingError(
            f"{source}:{header_line}: missing column(s) {', '.join(missing)}{hint}; "
            f"the header must include {','.join(REQUIRED_COLUMNS)} (found: {','.join(header) or 'nothing'})"
        )
    index = {name: i for i, name in enumerate(header)}
    records: list[BenchmarkRecord] = []
    for (lineno, _), row in zip(numbered[1:], rows[1:]):
        if len(row) != len(header):
            raise SizingError(
                f"{source}:{lineno}: row has {len(row)} field(s), the header has {len(header)}; "
                "every row needs a value for every column"
            )
        values: dict[str, float] = {}
        for col in REQUIRED_COLUMNS:
            cell = row[index[col]].strip()
            try:
                number = float(cell)
            except ValueError:
                raise SizingError(
                    f"{source}:{lineno}: column '{col}': '{cell}' is not a number; "
                    "write GiB as a plain number, e.g. 12.5"
                ) from None
            if not math.isfinite(number):
                raise SizingError(f"{source}:{lineno}: column '{col}': '{cell}' is not a finite number")
            if number < 0:
                raise SizingError(
                    f"{source}:{lineno}: column '{col}': {cell} is negative; sizes are GiB >= 0"
                )
            values[col] = number
        failed = False
        if FAILED_COLUMN in index:
            cell = row[index[FAILED_COLUMN]].strip()
            if cell.lower() not in FAILED_VALUES:
                raise SizingError(
                    f"{source}:{lineno}: column '{FAILED_COLUMN}': '{cell}' is not yes or no; "
                    "write yes for a run that failed (kept, not fitted), no or nothing otherwise"
                )
            failed = FAILED_VALUES[cell.lower()]
        extra = tuple((h, row[i].strip()) for h, i in index.items() if h not in REQUIRED_COLUMNS)
        records.append(BenchmarkRecord(**values, line=lineno, extra=extra, failed=failed))
    return records


# ---------------------------------------------------------------------------------------
# Student's t quantile, pure Python (no scipy): the regularised incomplete beta function
# by its continued fraction (Numerical Recipes 6.4), inverted by bisection.


def _betacf(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    bt = math.exp(lbt)
    if x < (a + 1.0) / (a + b + 2.0):
        return bt * _betacf(a, b, x) / a
    return 1.0 - bt * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: int) -> float:
    """P(T <= t) for Student's t with `df` degrees of freedom."""
    x = df / (df + t * t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, x)
    return 1.0 - tail if t >= 0 else tail


@functools.lru_cache(maxsize=256)
def t_quantile(p: float, df: int) -> float:
    """The p-quantile (0.5 < p < 1) of Student's t with `df` >= 1 degrees of freedom.
    Remembered per (p, df): a bisection over the incomplete beta function costs about
    0.3 ms, and sizing a hundred specs asks for the same few values hundreds of times."""
    if df < 1:
        raise ValueError("df must be >= 1")
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = (lo + hi) / 2.0
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return hi


# ---------------------------------------------------------------------------------------
# The fit


@dataclass(frozen=True)
class ComponentFit:
    """Least squares fit of one component (index, scratch or output) against input.

    model: "linear" (y = intercept + slope*x), "constant" (slope forced to 0 because the
    least squares slope was negative or every run had the same input), or "exact" (two
    runs: the line through them, no residuals to bound with).
    """

    component: str
    model: str
    n: int
    intercept: float
    slope: float
    residual_sd: float
    df: int
    t: float
    x_mean: float
    sxx: float
    r_squared: float | None
    points: tuple[tuple[float, float], ...]

    def predict(self, x: float) -> float:
        """The fitted (mean) value at input x, never negative."""
        return max(0.0, self.intercept + self.slope * x)

    def _raw_upper(self, x: float) -> float:
        if self.df < 1 or self.residual_sd == 0.0:
            spread = 0.0
        elif self.model == "constant":
            spread = self.t * self.residual_sd * math.sqrt(1.0 + 1.0 / self.n)
        else:
            spread = self.t * self.residual_sd * math.sqrt(
                1.0 + 1.0 / self.n + (x - self.x_mean) ** 2 / self.sxx
            )
        return self.intercept + self.slope * x + spread

    def upper(self, x: float) -> float:
        """The one-sided prediction bound at input x, monotone non-decreasing in x.

        The raw bound (line + t*s*sqrt(...)) is convex in x, so its running maximum over
        [0, x] is max(U(0), U(x)). It is also never below a benchmarked run at an input
        <= x: a larger input never needs less than a measured smaller one.
        """
        observed = max((y for px, y in self.points if px <= x), default=0.0)
        return max(0.0, self._raw_upper(0.0), self._raw_upper(x), observed)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n": self.n,
            "intercept_gib": round(self.intercept, 4),
            "slope_gib_per_input_gib": round(self.slope, 6),
            "residual_sd_gib": round(self.residual_sd, 4),
            "df": self.df,
            "t": round(self.t, 4),
            "r_squared": None if self.r_squared is None else round(self.r_squared, 4),
        }


def fit_component(records: Sequence[BenchmarkRecord], component: str) -> ComponentFit:
    """Fit one component against input (see ComponentFit). Needs at least 2 records."""
    pts = tuple((r.input_gib, r.value(component)) for r in records)
    n = len(pts)
    if n < 2:
        raise ValueError("fit_component needs at least 2 records")
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    xm = sum(xs) / n
    ym = sum(ys) / n
    sxx = sum((x - xm) ** 2 for x in xs)
    syy = sum((y - ym) ** 2 for y in ys)
    sxy = sum((x - xm) * (y - ym) for x, y in zip(xs, ys))
    slope = sxy / sxx if sxx > 0 else 0.0
    if sxx <= 0 or slope < 0:
        # No usable slope: the constant model (mean, spread of the runs around it).
        df = n - 1
        sd = math.sqrt(syy / df) if df >= 1 else 0.0
        return ComponentFit(
            component=component, model="constant", n=n, intercept=ym, slope=0.0,
            residual_sd=sd, df=df, t=t_quantile(CONFIDENCE, df) if df >= 1 else 0.0,
            x_mean=xm, sxx=sxx, r_squared=None, points=pts,
        )
    intercept = ym - slope * xm
    sse = sum((y - (intercept + slope * x)) ** 2 for x, y in zip(xs, ys))
    df = n - 2
    r2 = 1.0 - sse / syy if syy > 0 else 1.0
    if df < 1:
        return ComponentFit(
            component=component, model="exact", n=n, intercept=intercept, slope=slope,
            residual_sd=0.0, df=0, t=0.0, x_mean=xm, sxx=sxx, r_squared=None, points=pts,
        )
    return ComponentFit(
        component=component, model="linear", n=n, intercept=intercept, slope=slope,
        residual_sd=math.sqrt(sse / df), df=df, t=t_quantile(CONFIDENCE, df),
        x_mean=xm, sxx=sxx, r_squared=max(0.0, min(1.0, r2)), points=pts,
    )


# ---------------------------------------------------------------------------------------
# The plan


@dataclass(frozen=True)
class SizingPlan:
    """The size of one task's volume and how it was reached. All sizes in GiB."""

    task: str | None
    source: str  # "benchmarks" | "footprint"
    benchmarks: str | None  # the CSV it came from
    storage_driver: str  # overlay2 | devicemapper
    family: str | None
    max_input_gib: float
    concurrent_tasks: int
    headroom: float
    container_images_gib: float
    index_gib: float
    scratch_gib: float
    output_gib: float
    data_gib: float  # one task's data: input + index + scratch + output (with the floor)
    per_task_gib: float  # data + container images: what one task alone needs
    largest_benchmark_gib: float  # largest benchmarked run's footprint (0 without records)
    need_gib: float  # concurrent_tasks * data + images
    headroom_gib: float
    reserve_gib: float
    ami_min_gib: int
    volume_gib: int
    docker_basesize_gib: int | None
    docker_basesize_note: str
    price_per_gib_month: float
    fits: tuple[ComponentFit, ...] = ()
    records: tuple[BenchmarkRecord, ...] = ()
    warnings: tuple[str, ...] = ()
    tier: str | None = None
    tier_volume_gib: int | None = None
    grow_max_gib: int | None = None  # storage.grow: volume_gib is Docker's data volume, grown up to this
    grow_volume_type: str | None = None
    # storage.instance_store: docker: Docker's data is on the NVMe store (store_need_gib
    # must fit it), volume_gib is the root volume for the OS alone, and ebs_volume_gib is
    # what the root volume would be with Docker's data on it (the cost difference).
    instance_store: bool = False
    store_need_gib: float | None = None
    ebs_volume_gib: int | None = None
    stores: tuple[tuple[str, dict[str, Any]], ...] = ()  # (listed type, its store) for the report

    @property
    def grows(self) -> bool:
        return self.grow_max_gib is not None

    @property
    def monthly_cost_usd(self) -> float:
        """gp3 storage cost of one instance's volume for a month (the tier's if assigned)."""
        return round((self.tier_volume_gib or self.volume_gib) * self.price_per_gib_month, 2)

    def with_tier(self, name: str, volume_gib: int) -> SizingPlan:
        return replace(self, tier=name, tier_volume_gib=volume_gib)

    def fit_quality(self) -> dict[str, Any]:
        largest = max((r.input_gib for r in self.records), default=None)
        return {
            "confidence": CONFIDENCE,
            "records": len(self.records),
            "largest_benchmarked_input_gib": largest,
            "extrapolation_factor": (
                round(self.max_input_gib / largest, 3) if largest else None
            ),
            "components": {f.component: f.to_json() for f in self.fits},
        }

    def to_json(self) -> dict[str, Any]:
        r2 = lambda v: round(v, 3)  # noqa: E731
        return {
            "task": self.task,
            "source": self.source,
            "benchmarks": self.benchmarks,
            "storage_driver": self.storage_driver,
            "family": self.family,
            "volume_gib": self.volume_gib,
            "per_task_gib": r2(self.per_task_gib),
            "docker_basesize_gib": self.docker_basesize_gib,
            "docker_basesize_note": self.docker_basesize_note,
            "tier": self.tier,
            "tier_volume_gib": self.tier_volume_gib,
            "monthly_cost_usd": self.monthly_cost_usd,
            "price_per_gib_month": self.price_per_gib_month,
            "breakdown": {
                "input_gib": r2(self.max_input_gib),
                "index_gib": r2(self.index_gib),
                "scratch_gib": r2(self.scratch_gib),
                "output_gib": r2(self.output_gib),
                "data_gib": r2(self.data_gib),
                "largest_benchmark_gib": r2(self.largest_benchmark_gib),
                "container_images_gib": r2(self.container_images_gib),
                "per_task_gib": r2(self.per_task_gib),
                "concurrent_tasks": self.concurrent_tasks,
                "need_gib": r2(self.need_gib),
                "headroom": self.headroom,
                "headroom_gib": r2(self.headroom_gib),
                "reserve_gib": r2(self.reserve_gib),
                "ami_min_gib": self.ami_min_gib,
                "volume_gib": self.volume_gib,
            },
            "grow": (
                {
                    "data_volume_gib": self.volume_gib,
                    "max_gib": self.grow_max_gib,
                    "volume_type": self.grow_volume_type,
                    "can_add_gib": self.grow_max_gib - self.volume_gib,
                }
                if self.grows
                else None
            ),
            "instance_store": (
                {
                    "need_gib": r2(self.store_need_gib or 0.0),
                    "root_volume_gib": self.volume_gib,
                    "root_monthly_cost_usd": self.monthly_cost_usd,
                    "ebs_volume_gib": self.ebs_volume_gib,
                    "ebs_monthly_cost_usd": round((self.ebs_volume_gib or 0) * self.price_per_gib_month, 2),
                    "saves_usd_per_month": round(((self.ebs_volume_gib or 0) - (self.tier_volume_gib or self.volume_gib)) * self.price_per_gib_month, 2),
                    "types": {name: store for name, store in self.stores},
                }
                if self.instance_store
                else None
            ),
            "fit": self.fit_quality() if self.fits else None,
            "warnings": list(self.warnings),
        }


def _ceil_gib(value: float) -> int:
    # Guard against float noise such as 30.000000000000004 rounding up to 31.
    return int(math.ceil(round(value, 6)))


def size_workload(
    records: Sequence[BenchmarkRecord],
    max_input_gib: float,
    *,
    concurrent_tasks: int = 1,
    headroom: float = 0.2,
    container_images_gib: float = 0.0,
    storage_driver: str = "overlay2",
    family: str | None = None,
    footprint: Any = None,
    task: str | None = None,
    benchmarks: str | None = None,
    price_per_gib_month: float = DEFAULT_PRICE_PER_GIB_MONTH,
    where: str = "",
    grow: Any = None,
    instance_store: bool = False,
) -> SizingPlan:
    """Size a workload from plain numbers (no spec): the core of `size_task`.

    `footprint` (anything with index_gib, scratch_gib, output_gib at max_input_gib) is used
    when there are fewer than 2 records. `where` prefixes error messages (the spec file).
    `grow` (anything with max_gib and volume_type, the spec's storage.grow) sizes Docker's
    own data volume instead of the root volume: no floor from the AMI, a smaller reserve.
    """
    at = f"{where}: " if where else ""
    if not (isinstance(max_input_gib, (int, float)) and math.isfinite(max_input_gib) and max_input_gib > 0):
        raise SizingError(f"{at}storage.max_input_gib must be a number > 0 (got {max_input_gib!r})")
    if max_input_gib > GP3_MAX_GIB:
        raise SizingError(
            f"{at}storage.max_input_gib {max_input_gib:g} GiB is beyond one gp3 volume ({GP3_MAX_GIB} GiB, 16 TiB) "
            "before anything else is added; split the input"
        )
    if not (isinstance(price_per_gib_month, (int, float)) and math.isfinite(price_per_gib_month) and price_per_gib_month >= 0):
        raise SizingError(f"{at}the gp3 price must be a number of USD per GiB-month >= 0 (got {price_per_gib_month!r})")
    if not isinstance(concurrent_tasks, int) or concurrent_tasks < 1:
        raise SizingError(f"{at}storage.concurrent_tasks must be a whole number >= 1 (got {concurrent_tasks!r})")
    if not (math.isfinite(headroom) and headroom >= 0):
        raise SizingError(f"{at}storage.headroom must be a fraction >= 0, e.g. 0.2 (got {headroom!r})")
    if not (math.isfinite(container_images_gib) and container_images_gib >= 0):
        raise SizingError(f"{at}storage.container_images_gib must be >= 0 (got {container_images_gib!r})")
    if storage_driver not in RESERVE_GIB:
        raise SizingError(f"{at}unknown storage driver {storage_driver!r}; expected overlay2 or devicemapper")

    failed_runs = [r for r in records if r.failed]
    records = tuple(r for r in records if not r.failed)
    bench_name = benchmarks or "the benchmark file"
    warnings: list[str] = []
    if failed_runs:
        warnings.append(
            f"{len(failed_runs)} failed run(s) (failed=yes, line {', '.join(str(r.line) for r in failed_runs)}) "
            "kept in the file but left out of the fit"
        )
    fits: tuple[ComponentFit, ...] = ()
    distinct_inputs = {r.input_gib for r in records}
    largest_input = max(distinct_inputs, default=0.0)
    can_fit = len(records) >= 2 and (len(distinct_inputs) >= 2 or max_input_gib <= largest_input)

    if can_fit:
        source = "benchmarks"
        fits = tuple(fit_component(records, c) for c in COMPONENTS)
        try:
            index, scratch, output = (f.upper(max_input_gib) for f in fits)
        except OverflowError:
            raise SizingError(
                f"{at}max_input_gib {max_input_gib:g} is too far beyond the benchmarked inputs to extrapolate; "
                "benchmark a run closer to it"
            ) from None
        if largest_input and max_input_gib > EXTRAPOLATION_WARN_FACTOR * largest_input:
            warnings.append(
                f"max_input_gib {max_input_gib:g} is {max_input_gib / largest_input:.1f}x the largest "
                f"benchmarked input ({largest_input:g} GiB): the fit is extrapolated far; "
                f"benchmark a run closer to {max_input_gib:g} GiB"
            )
        for f in fits:
            if f.model == "exact":
                warnings.append(
                    f"{f.component}: only 2 runs, the line passes through both and has no residuals "
                    "to bound with; add a third run for a prediction bound"
                )
                break
    elif footprint is not None:
        source = "footprint"
        index = float(footprint.index_gib)
        scratch = float(footprint.scratch_gib)
        output = float(footprint.output_gib)
        if records:
            warnings.append(
                f"{len(records)} benchmark run(s) cannot be fitted against input; "
                "sized from storage.footprint (the largest run is still a floor)"
            )
    else:
        if len(records) >= 2:
            reason = (
                f"all {len(records)} runs in {bench_name} have input_gib {largest_input:g}, so "
                f"nothing says how storage grows up to max_input_gib {max_input_gib:g}"
            )
        else:
            reason = f"{bench_name if benchmarks else 'the task'} has {len(records)} benchmark run(s); the fit needs at least 2"
        raise SizingError(
            f"{at}cannot size storage: {reason}. Fix: add benchmark rows at two or more different "
            "input sizes (columns input_gib,index_gib,scratch_gib,output_gib), or set "
            "storage.footprint {index_gib, scratch_gib, output_gib} measured at max_input_gib"
        )

    try:
        return _finish(
            records, max_input_gib, concurrent_tasks, headroom, container_images_gib, storage_driver, family,
            task, benchmarks, price_per_gib_month, at, source, fits, index, scratch, output, warnings, grow,
            instance_store,
        )
    except OverflowError:
        raise SizingError(
            f"{at}the sizes are too large to compute (beyond gp3's {GP3_MAX_GIB} GiB by far); "
            "lower storage.concurrent_tasks or storage.max_input_gib"
        ) from None


def _finish(
    records: tuple[BenchmarkRecord, ...], max_input_gib: float, concurrent_tasks: int, headroom: float,
    container_images_gib: float, storage_driver: str, family: str | None, task: str | None,
    benchmarks: str | None, price_per_gib_month: float, at: str, source: str,
    fits: tuple[ComponentFit, ...], index: float, scratch: float, output: float, warnings: list[str],
    grow: Any = None,
    instance_store: bool = False,
) -> SizingPlan:
    """Steps 3-5 of the module docstring: from the three components to the volume."""
    largest_fp = max((r.footprint_gib for r in records), default=0.0)
    modelled = max_input_gib + index + scratch + output
    data = max(modelled, largest_fp)
    if data > modelled:
        warnings.append(
            f"a benchmarked run used {largest_fp:g} GiB, more than the model's {modelled:.1f} GiB at "
            f"max_input_gib {max_input_gib:g}; sized to the run"
        )
    per_task = data + container_images_gib
    need = concurrent_tasks * data + container_images_gib
    headroom_gib = need * headroom
    reserve = RESERVE_GIB[storage_driver]
    ami_min = FAMILIES[family].base_sized_gib if family in FAMILIES else GP3_MIN_GIB
    if grow is not None:  # a fresh data volume: no snapshot to cover, no OS on it
        reserve, ami_min = GROW_RESERVE_GIB, GP3_MIN_GIB
    if storage_driver == "devicemapper":
        basesize: int | None = max(_ceil_gib(per_task * (1.0 + headroom)), DOCKER_DEFAULT_BASESIZE_GIB)
        note = (
            f"devicemapper limits each container to dm.basesize; one task needs {per_task:.1f} GiB "
            f"(+{headroom:.0%} headroom), so dm.basesize={basesize}G (never below Docker's default 10G); "
            "the volume holds at least one full container"
        )
    else:
        basesize = None
        note = (
            "overlay2 has no per-container size limit: a container may use the whole volume, "
            "so there is no basesize to set"
        )
    volume = max(_ceil_gib(need + headroom_gib + reserve), ami_min, GP3_MIN_GIB)
    if basesize is not None:
        volume = max(volume, _ceil_gib(basesize + reserve))
    store_need = ebs_volume = None
    if instance_store:
        # Docker's data goes to the NVMe store: what it must hold is the need with headroom
        # and Docker's own state (factory.instance_store checks each type); the root volume
        # keeps the OS, the ECS agent and its logs alone (the reserve, never below the AMI's).
        from factory.instance_store import DOCKER_STATE_GIB

        store_need = need + headroom_gib + DOCKER_STATE_GIB
        ebs_volume = volume
        volume = max(_ceil_gib(reserve), ami_min, GP3_MIN_GIB)
    elif volume > GP3_MAX_GIB:
        raise SizingError(
            f"{at}needs a {volume} GiB volume ({concurrent_tasks} x {data:.1f} GiB per task + "
            f"{container_images_gib:g} GiB images, +{headroom:.0%} headroom, +{reserve:g} GiB reserve), "
            f"beyond gp3's limit of {GP3_MAX_GIB} GiB (16 TiB). Fix: lower storage.concurrent_tasks, "
            "split the input so storage.max_input_gib is smaller, or lower storage.headroom or storage.container_images_gib"
        )

    return SizingPlan(
        task=task, source=source, benchmarks=benchmarks, storage_driver=storage_driver,
        family=family, max_input_gib=float(max_input_gib), concurrent_tasks=concurrent_tasks,
        headroom=float(headroom), container_images_gib=float(container_images_gib),
        index_gib=index, scratch_gib=scratch, output_gib=output, data_gib=data,
        per_task_gib=per_task, largest_benchmark_gib=largest_fp, need_gib=need,
        headroom_gib=headroom_gib, reserve_gib=reserve, ami_min_gib=ami_min, volume_gib=volume,
        docker_basesize_gib=basesize, docker_basesize_note=note,
        price_per_gib_month=price_per_gib_month, fits=fits, records=records,
        warnings=tuple(warnings),
        grow_max_gib=int(grow.max_gib) if grow is not None else None,
        grow_volume_type=str(grow.volume_type) if grow is not None else None,
        instance_store=instance_store, store_need_gib=store_need, ebs_volume_gib=ebs_volume,
    )


def size_task(
    spec: Any,
    records: Sequence[BenchmarkRecord] | None = None,
    *,
    price_per_gib_month: float = DEFAULT_PRICE_PER_GIB_MONTH,
) -> SizingPlan:
    """Size a TaskSpec. `records` overrides reading spec.storage.benchmarks (for tests)."""
    st = spec.storage
    where = str(getattr(spec, "path", "") or spec.name)
    bench_path = st.benchmarks
    if records is None:
        if bench_path is not None:
            try:
                records = load_benchmarks(bench_path)
            except SizingError as exc:
                raise SizingError(f"{where}: storage.benchmarks: {exc.message}") from None
        else:
            records = []
    family = spec.image.family
    fam = FAMILIES.get(family)
    driver = fam.storage_driver if fam else "overlay2"
    on_store = bool(getattr(st, "on_instance_store", False))
    plan = size_workload(
        records,
        st.max_input_gib,
        concurrent_tasks=st.concurrent_tasks,
        headroom=st.headroom,
        container_images_gib=st.container_images_gib,
        storage_driver=driver,
        family=family,
        footprint=st.footprint,
        task=spec.name,
        benchmarks=str(bench_path) if bench_path is not None else None,
        price_per_gib_month=price_per_gib_month,
        where=where,
        grow=getattr(st, "grow", None),
        instance_store=on_store,
    )
    if on_store:
        from factory import instance_store

        refused = instance_store.refusals(spec.batch.instance_types, plan.store_need_gib)
        if refused:
            raise instance_store.InstanceStoreRefused(where, refused)
        stores = []
        for listed in spec.batch.instance_types:  # a family: its smallest size, the one that must still fit
            store = instance_store.smallest_store([listed])
            if store is not None:
                stores.append((listed, {"type": store.instance_type, **store.to_json()}))
        plan = replace(plan, stores=tuple(stores))
    return plan


def size_specs(specs: Iterable[Any], *, price_per_gib_month: float = DEFAULT_PRICE_PER_GIB_MONTH) -> list[tuple[Any, SizingPlan]]:
    """Size every spec; pairs ready for `factory.tiers.choose_tiers`."""
    return [(s, size_task(s, price_per_gib_month=price_per_gib_month)) for s in specs]
