"""Task specs: load, check (schema + semantic rules) and turn into a TaskSpec.

A spec is `specs/<task>.yaml`. Every problem found, in every file, is reported as
`file::field.path: message`, with the fix where one can be named; nothing raises a
traceback for bad input.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable

from factory.errors import SizingError, SpecError, UsageError
from factory.families import BASE_TO_FAMILY, FAMILIES, Family
from factory.gpu import DEFAULT_GPUS
from factory.sizing import GP3_MAX_GIB, load_benchmarks
from factory.yamlsafe import YamlProblem, read_yaml

SPEC_SUFFIXES = (".yaml", ".yml")
DEFAULT_PREFIX = "/home/ec2-user/miniconda"
ON_DEMAND_STRATEGIES = ("BEST_FIT", "BEST_FIT_PROGRESSIVE")
SPOT_STRATEGIES = ("BEST_FIT", "BEST_FIT_PROGRESSIVE", "SPOT_CAPACITY_OPTIMIZED", "SPOT_PRICE_CAPACITY_OPTIMIZED")


# ---------------------------------------------------------------------------------------
# The typed spec


@dataclass(frozen=True)
class ImageSpec:
    base: str
    family: str
    architecture: str
    volume: str
    accelerator: str = "none"  # "none" | "nvidia": the family's ECS GPU-optimized AMI

    @property
    def base_parameter(self) -> str | None:
        """The SSM parameter naming the base AMI (None for a pinned AMI, or when AWS publishes none)."""
        if self.pinned_ami:
            return None
        return self.family_info.ssm_parameter(self.architecture, self.accelerator)

    @property
    def pinned_ami(self) -> str | None:
        return self.base if self.base.startswith("ami-") else None

    @property
    def family_info(self) -> Family:
        return FAMILIES[self.family]


@dataclass(frozen=True)
class Footprint:
    index_gib: float
    scratch_gib: float
    output_gib: float


@dataclass(frozen=True)
class GrowSpec:
    """`storage.grow`: Docker gets its own data volume, and the grow agent adds to it."""

    max_gib: int  # the most Docker's storage on one instance may grow to
    volume_type: str = "gp3"


@dataclass(frozen=True)
class StorageSpec:
    benchmarks: Path | None
    max_input_gib: float
    concurrent_tasks: int
    headroom: float
    container_images_gib: float
    footprint: Footprint | None
    grow: GrowSpec | None = None
    # storage.instance_store: "docker" puts Docker's data root on the NVMe instance store
    # (factory.instance_store, ansible/roles/instance_store); "off" keeps it on EBS.
    instance_store: str = "off"

    @property
    def on_instance_store(self) -> bool:
        return self.instance_store == "docker"


@dataclass(frozen=True)
class AwsCliSpec:
    prefix: str

    @property
    def cli_path(self) -> str:
        return f"{self.prefix}/bin/aws"


@dataclass(frozen=True)
class BatchSpec:
    instance_types: tuple[str, ...]
    min_vcpus: int
    max_vcpus: int
    provisioning: str
    allocation_strategy: str
    spot_bid_percentage: int | None


@dataclass(frozen=True)
class NextflowSpec:
    process: str
    containers: tuple[str, ...] = ()  # the task's images; the bake check runs the AWS CLI in each
    gpus: int | None = None  # a GPU task's `accelerator = N` (default 1); None for a CPU task


@dataclass(frozen=True)
class TaskSpec:
    name: str
    description: str
    region: str
    image: ImageSpec
    storage: StorageSpec
    awscli: AwsCliSpec
    batch: BatchSpec
    nextflow: NextflowSpec
    path: Path
    spec_hash: str
    distribute: Any = None  # factory.distribution.Distribution: the fields this spec gives; None: factory.yaml's


    def to_json(self) -> dict[str, Any]:
        return normalised(self)


# ---------------------------------------------------------------------------------------
# Problems and reports


@dataclass(frozen=True)
class Problem:
    file: str
    field: str  # dotted path, e.g. "storage.concurrent_tasks"; "" for the whole file
    message: str

    def __str__(self) -> str:
        return f"{self.file}::{self.field}: {self.message}" if self.field else f"{self.file}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"file": self.file, "field": self.field, "message": self.message}


@dataclass
class FileResult:
    path: Path
    problems: list[Problem] = field(default_factory=list)
    spec: TaskSpec | None = None

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass
class Report:
    results: list[FileResult]

    @property
    def valid(self) -> bool:
        return all(r.valid for r in self.results)

    @property
    def problems(self) -> list[Problem]:
        return [p for r in self.results for p in r.problems]

    def to_json(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "files": [
                {
                    "file": display(r.path),
                    "valid": r.valid,
                    "task": r.spec.name if r.spec else None,
                    "errors": [p.to_json() for p in r.problems],
                }
                for r in self.results
            ],
            "error_count": len(self.problems),
        }


def display(path: Path) -> str:
    """A path as the user would type it: relative to the working directory when inside it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# ---------------------------------------------------------------------------------------
# Schema


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    from factory.resources import data_dir

    return json.loads((data_dir("schemas") / "task-spec.schema.json").read_text())


def _path_str(parts: Iterable[Any]) -> str:
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _path_key(parts: Iterable[Any]) -> list[tuple[int, Any]]:
    """Sort key for a field path: list indexes in numeric order ([2] before [10])."""
    return [(0, p) if isinstance(p, int) else (1, str(p)) for p in parts]


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "empty (null)"
    return type(value).__name__


_EXPECTED = {"object": "a mapping", "array": "a list", "string": "a string", "number": "a number", "integer": "a whole number"}

_PATTERN_HELP = {
    "name": "must be 2-40 lowercase letters, digits and hyphens, starting with a letter (e.g. salmon-quant)",
    "region": "must be an AWS region such as us-east-1 or eu-west-2",
    "image.base": "must be ecs-al2023, ecs-al2, ecs-al1 or a pinned AMI id such as ami-0123456789abcdef0",
    "awscli.prefix": "must be an absolute path without spaces, e.g. /home/ec2-user/miniconda",
}


def _suggest(word: str, choices: Iterable[str]) -> str:
    match = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f"; did you mean `{match[0]}`?" if match else ""


def _schema_problems(doc: Any, file: str) -> list[Problem]:
    from jsonschema import Draft202012Validator

    problems: list[Problem] = []
    validator = Draft202012Validator(schema())
    for error in sorted(validator.iter_errors(doc), key=lambda e: (_path_key(e.absolute_path), e.validator)):
        path = list(error.absolute_path)
        where = _path_str(path)
        kind = error.validator
        inst = error.instance
        if kind == "additionalProperties" and isinstance(inst, dict):
            known = error.schema.get("properties", {}).keys()
            for key in sorted(k for k in inst if k not in known):
                allowed = ", ".join(known)
                problems.append(
                    Problem(file, _path_str(path + [key]), f"unknown key{_suggest(key, known) or f' (allowed here: {allowed})'}")
                )
        elif kind == "required" and isinstance(inst, dict):
            for key in error.validator_value:
                if key not in inst:
                    problems.append(Problem(file, _path_str(path + [key]), "is required but missing"))
        elif kind == "type":
            expected = error.validator_value
            expected = " or ".join(_EXPECTED.get(t, t) for t in (expected if isinstance(expected, list) else [expected]))
            problems.append(Problem(file, where, f"must be {expected}, not {_type_name(inst)} ({json.dumps(inst, default=str)[:60]})"))
        elif kind == "enum":
            options = ", ".join(str(o) for o in error.validator_value)
            problems.append(Problem(file, where, f"must be one of {options}; got {inst!r}{_suggest(str(inst), map(str, error.validator_value))}"))
        elif kind == "pattern":
            generic = re.sub(r"\[\d+\]", "[]", where)
            help_text = _PATTERN_HELP.get(generic) or (
                "must be an EC2 instance type such as m5.xlarge, a family such as c6i, `optimal`, `default_x86_64` or `default_arm64`"
                if generic == "batch.instance_types[]"
                else f"must match {error.validator_value}"
            )
            problems.append(Problem(file, where, f"{help_text}; got {inst!r}"))
        elif kind in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
            op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[kind]
            problems.append(Problem(file, where, f"must be {op} {error.validator_value}; got {inst!r}"))
        elif kind in ("minLength", "maxLength"):
            problems.append(Problem(file, where, "must not be empty" if kind == "minLength" else f"is too long (at most {error.validator_value} characters)"))
        elif kind == "minItems":
            problems.append(Problem(file, where, f"must list at least {error.validator_value} item"))
        elif kind == "uniqueItems":
            problems.append(Problem(file, where, "lists the same item twice; remove the repeat"))
        else:
            problems.append(Problem(file, where, error.message))
    return list(dict.fromkeys(problems))  # one `required` error per missing key repeats the list


# ---------------------------------------------------------------------------------------
# Semantic rules the schema cannot express


def default_instance_types(architecture: str) -> list[str]:
    """Batch's own choice of instance types for the architecture: `optimal` is x86 only,
    so an arm64 task defaults to `default_arm64` (Graviton families)."""
    return ["default_arm64"] if architecture == "arm64" else ["optimal"]


def _is_arm_instance(instance_type: str) -> bool | None:
    """True for Graviton types, False for x86, None when we cannot tell (e.g. `optimal`)."""
    if instance_type in ("optimal", "default_x86_64"):
        return False  # Batch's `optimal` picks x86 families only (Batch API reference, instanceTypes)
    if instance_type == "default_arm64":
        return True
    family = instance_type.split(".")[0]
    if family == "a1":
        return True
    m = re.match(r"^[a-z]+(\d+)([a-z-]*)$", family)
    if not m:
        return None
    return "g" in m.group(2)


def _benchmark_problems(doc: dict[str, Any], spec_path: Path, file: str) -> list[Problem]:
    storage = doc["storage"]
    bench = storage.get("benchmarks")
    if not isinstance(bench, str):
        if bench is not None:
            return []  # the schema reports the wrong type
        if "footprint" not in storage:
            return [Problem(file, "storage.benchmarks", "give a benchmark CSV of measured runs, or `storage.footprint` (index_gib, scratch_gib, output_gib)")]
        return []
    path = (spec_path.parent / bench)
    field_ = "storage.benchmarks"
    if not path.is_file():
        return [Problem(file, field_, f"file {display(path)} does not exist (the path is relative to the spec file)")]
    try:
        records = load_benchmarks(path)  # the sizing model owns the format
    except SizingError as exc:  # the loader's message already names the file, line and column
        return [Problem(file, field_, f"cannot use it: {exc.message}")]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return [Problem(file, field_, f"cannot use {display(path)}: {exc}")]
    usable = [r for r in records if not r.failed]
    if len(usable) < 2 and "footprint" not in storage:
        failed = len(records) - len(usable)
        also = f" (and {failed} failed, not fitted)" if failed else ""
        return [Problem(file, field_, f"{display(path)} has {len(usable)} measured run(s){also}; add at least 2 rows to fit, or give `storage.footprint`")]
    return []


def _section(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key, {})
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _semantic_problems(doc: dict[str, Any], spec_path: Path, file: str) -> list[Problem]:
    problems: list[Problem] = []
    stem = spec_path.stem
    name = doc.get("name")
    if isinstance(name, str) and name != stem:
        problems.append(Problem(file, "name", f"is {name!r} but the file is {spec_path.name}; rename the file to {name}.yaml or set `name: {stem}`"))

    image = _section(doc, "image")
    base = image.get("base", "ecs-al2023")
    base = base if isinstance(base, str) else "ecs-al2023"
    fam = image.get("family")
    arch = image.get("architecture", "x86_64")
    if base.startswith("ami-") and fam is None:
        problems.append(Problem(file, "image.family", f"is required with a pinned AMI ({base}): say which family it is (al2023, al2 or al1)"))
    if not base.startswith("ami-") and fam is not None and BASE_TO_FAMILY.get(base) != fam:
        problems.append(Problem(file, "image.family", f"applies only to a pinned ami-...; {base} is already {BASE_TO_FAMILY.get(base)}, remove `family`"))
    family_key = fam if base.startswith("ami-") else BASE_TO_FAMILY.get(base)
    if family_key == "al1" and arch == "arm64":
        problems.append(Problem(file, "image.architecture", "the legacy ECS-optimized Amazon Linux (al1) has no arm64 image; use ecs-al2023 or x86_64"))
    accelerator = image.get("accelerator", "none")
    gpu = accelerator == "nvidia"
    if gpu and family_key in FAMILIES and arch in ("x86_64", "arm64"):
        reason = FAMILIES[family_key].no_base_reason(arch, accelerator)
        if reason:
            where = "image.architecture" if arch == "arm64" and FAMILIES[family_key].ssm_nvidia_x86_64 else "image.base"
            problems.append(Problem(file, where, f"cannot be used with `image.accelerator: nvidia`: {reason}"))

    storage = _section(doc, "storage")
    max_in = storage.get("max_input_gib")
    if _number(max_in) and max_in > GP3_MAX_GIB:
        problems.append(Problem(file, "storage.max_input_gib", f"{max_in} GiB is beyond one gp3 volume ({GP3_MAX_GIB} GiB); split the input"))
    if "storage" in doc and isinstance(doc["storage"], dict):
        problems += _benchmark_problems(doc, spec_path, file)
    if storage.get("instance_store") == "docker":
        if isinstance(storage.get("grow"), dict):
            problems.append(Problem(
                file, "storage.instance_store",
                "docker cannot be combined with storage.grow: the grow agent extends an EBS pool at Docker's data root, "
                "while the instance store is a fixed set of NVMe disks made Docker's data root at boot; keep one: remove "
                "storage.grow (the store must then hold the task) or set storage.instance_store: off",
            ))
        if family_key in FAMILIES and FAMILIES[family_key].storage_driver != "overlay2":
            problems.append(Problem(
                file, "storage.instance_store",
                f"the {FAMILIES[family_key].label} keeps Docker in a devicemapper thin pool on its own EBS volume; "
                "instance-store Docker needs overlay2: use image.base ecs-al2023 or set storage.instance_store: off",
            ))
    if isinstance(storage.get("grow"), dict):
        if family_key in FAMILIES and FAMILIES[family_key].data_device is None:
            problems.append(Problem(
                file, "storage.grow",
                f"the {FAMILIES[family_key].label} keeps Docker in a devicemapper thin pool, which the grow agent does not extend; "
                "use image.base ecs-al2023 or remove storage.grow",
            ))
        if image.get("volume") == "ami":
            problems.append(Problem(
                file, "storage.grow",
                "needs `image.volume: launch-template`: the data volume the agent grows is added by the launch template, "
                "not baked into the AMI; remove image.volume or storage.grow",
            ))

    batch = _section(doc, "batch")
    lo, hi = batch.get("min_vcpus", 0), batch.get("max_vcpus", 256)
    if _number(lo) and _number(hi) and lo > hi:
        problems.append(Problem(file, "batch.min_vcpus", f"({lo}) is larger than batch.max_vcpus ({hi})"))
    prov = batch.get("provisioning", "on-demand")
    strategy = batch.get("allocation_strategy")
    if prov == "on-demand":
        if "spot_bid_percentage" in batch:
            problems.append(Problem(file, "batch.spot_bid_percentage", "applies only with `provisioning: spot`; remove it or switch to spot"))
        if strategy and strategy not in ON_DEMAND_STRATEGIES:
            problems.append(Problem(file, "batch.allocation_strategy", f"{strategy} is for spot; on-demand takes {' or '.join(ON_DEMAND_STRATEGIES)}"))
    types = batch.get("instance_types", [])
    problems += _accelerator_type_problems(file, gpu, types, doc, family_key)
    for i, itype in enumerate(types if isinstance(types, list) else []):
        if not isinstance(itype, str):
            continue
        arm = _is_arm_instance(itype)
        if arm is None:
            continue
        if arch == "arm64" and not arm:
            problems.append(Problem(file, f"batch.instance_types[{i}]", f"{itype} is an x86_64 type but image.architecture is arm64; use Graviton types such as m7g.xlarge"))
        if arch == "x86_64" and arm:
            problems.append(Problem(file, f"batch.instance_types[{i}]", f"{itype} is a Graviton (arm64) type but image.architecture is x86_64; set `image.architecture: arm64` or pick an x86 type"))
    if isinstance(doc.get("distribute"), dict):
        from factory import distribution

        distribution.parse(doc["distribute"], lambda where, message: problems.append(Problem(file, where, message)))
    return problems


def _accelerator_type_problems(file: str, gpu: bool, types: Any, doc: dict[str, Any], family_key: str | None) -> list[Problem]:
    """A GPU spec names NVIDIA GPU types only (the queue's types choose the GPU: Nextflow's
    accelerator.type is ignored on Batch); a CPU spec names none, nor nextflow.gpus."""
    from factory import gpu as gpu_mod

    problems: list[Problem] = []
    if gpu and "instance_types" not in _section(doc, "batch"):
        problems.append(Problem(
            file, "batch.instance_types",
            f"is required with `image.accelerator: nvidia`: Batch's default (optimal) picks CPU families only; "
            f"name NVIDIA GPU types such as {gpu_mod.example_types()}",
        ))
    for i, itype in enumerate(types if isinstance(types, list) else []):
        if not isinstance(itype, str):
            continue
        where = f"batch.instance_types[{i}]"
        if gpu and itype in gpu_mod.BATCH_CPU_KEYWORDS:
            problems.append(Problem(file, where, f"{itype} picks CPU-only families (C, M, R), but image.accelerator is nvidia; "
                                                 f"name NVIDIA GPU types such as {gpu_mod.example_types()}"))
        elif gpu and gpu_mod.nvidia_gpu(itype) is None:
            other = gpu_mod.accelerator_of(itype)
            kind = f"carries {other}, not an NVIDIA GPU" if other else "has no GPU"
            problems.append(Problem(file, where, f"{itype} {kind}, but image.accelerator is nvidia; "
                                                 f"name NVIDIA GPU types such as {gpu_mod.example_types()}"))
        elif gpu and family_key == "al2023" and gpu_mod.instance_family(itype) in gpu_mod.NOT_ON_AL2023_NVIDIA:
            problems.append(Problem(file, where, f"{itype} is not supported by Batch's ECS_AL2023_NVIDIA image type (p3 and g3 are not); "
                                                 "pick a newer GPU type such as g5 or g6, or use image.base ecs-al2"))
        elif not gpu and gpu_mod.nvidia_gpu(itype):
            problems.append(Problem(file, where, f"{itype} is a GPU type ({gpu_mod.nvidia_gpu(itype)}) but image.accelerator is none: "
                                                 "its GPU would sit idle at the GPU price on an image without the NVIDIA stack; "
                                                 "set `image.accelerator: nvidia` or pick a CPU type"))
    nextflow = _section(doc, "nextflow")
    if not gpu and "gpus" in nextflow:
        problems.append(Problem(file, "nextflow.gpus", "applies only with `image.accelerator: nvidia`; remove it or set the accelerator"))
    return problems


# ---------------------------------------------------------------------------------------
# Building the TaskSpec


def _build(doc: dict[str, Any], spec_path: Path) -> TaskSpec:
    image = doc.get("image", {})
    base = image.get("base", "ecs-al2023")
    family = image["family"] if base.startswith("ami-") else BASE_TO_FAMILY[base]
    st = doc["storage"]
    fp = st.get("footprint")
    batch = doc.get("batch", {})
    prov = batch.get("provisioning", "on-demand")
    strategy = batch.get("allocation_strategy") or ("SPOT_CAPACITY_OPTIMIZED" if prov == "spot" else "BEST_FIT_PROGRESSIVE")
    bench = (spec_path.parent / st["benchmarks"]).resolve() if st.get("benchmarks") else None
    accelerator = image.get("accelerator", "none")
    nextflow = doc.get("nextflow", {})
    spec = TaskSpec(
        name=doc["name"],
        description=doc["description"].strip(),
        region=doc.get("region", "us-east-1"),
        image=ImageSpec(base=base, family=family, architecture=image.get("architecture", "x86_64"), volume=image.get("volume", "launch-template"),
                        accelerator=accelerator),
        storage=StorageSpec(
            benchmarks=bench,
            max_input_gib=float(st["max_input_gib"]),
            concurrent_tasks=int(st.get("concurrent_tasks", 1)),
            headroom=float(st.get("headroom", 0.2)),
            container_images_gib=float(st.get("container_images_gib", 1)),
            footprint=Footprint(float(fp["index_gib"]), float(fp["scratch_gib"]), float(fp["output_gib"])) if fp else None,
            grow=GrowSpec(max_gib=int(st["grow"]["max_gib"]), volume_type=st["grow"].get("volume_type", "gp3")) if "grow" in st else None,
            instance_store=st.get("instance_store", "off"),
        ),
        awscli=AwsCliSpec(prefix=doc.get("awscli", {}).get("prefix", DEFAULT_PREFIX)),
        batch=BatchSpec(
            instance_types=tuple(batch.get("instance_types") or default_instance_types(image.get("architecture", "x86_64"))),
            min_vcpus=int(batch.get("min_vcpus", 0)),
            max_vcpus=int(batch.get("max_vcpus", 256)),
            provisioning=prov,
            allocation_strategy=strategy,
            spot_bid_percentage=batch.get("spot_bid_percentage", 100 if prov == "spot" else None),
        ),
        nextflow=NextflowSpec(
            process=doc.get("nextflow", {}).get("process", doc["name"].replace("-", "_")),
            containers=tuple(nextflow.get("containers", ())),
            gpus=int(nextflow.get("gpus", DEFAULT_GPUS)) if accelerator == "nvidia" else None,
        ),
        path=spec_path.resolve(),
        spec_hash="",
        distribute=_distribute(doc),
    )
    # Where the AMI is distributed does not shape the image: not part of the spec hash.
    hashed = {k: v for k, v in normalised(spec).items() if k != "distribute"}
    digest = hashlib.sha256(json.dumps(hashed, sort_keys=True).encode())
    if bench is not None:
        digest.update(bench.read_bytes())
    return replace(spec, spec_hash=digest.hexdigest())


def _distribute(doc: dict[str, Any]) -> Any:
    """The spec's own `distribute:` (checked by _semantic_problems), or None."""
    if "distribute" not in doc:
        return None
    from factory import distribution

    return distribution.parse(doc["distribute"], lambda where, message: None)


def normalised(spec: TaskSpec) -> dict[str, Any]:
    """The spec with every default filled in, as plain data (no file paths but the benchmark's name).

    `storage.grow` and `storage.instance_store: docker` appear only when set, so a spec without it keeps its spec hash."""
    st = spec.storage
    storage: dict[str, Any] = {
        "benchmarks": st.benchmarks.name if st.benchmarks else None,
        "max_input_gib": st.max_input_gib,
        "concurrent_tasks": st.concurrent_tasks,
        "headroom": st.headroom,
        "container_images_gib": st.container_images_gib,
        "footprint": vars(st.footprint) if st.footprint else None,
    }
    if st.grow is not None:
        storage["grow"] = {"max_gib": st.grow.max_gib, "volume_type": st.grow.volume_type}
    if st.on_instance_store:  # only when set, so every other spec keeps its hash
        storage["instance_store"] = st.instance_store
    return {
        "name": spec.name,
        "description": spec.description,
        "region": spec.region,
        # `accelerator` (and nextflow.gpus) only for a GPU task, so a CPU spec keeps its hash
        "image": {"base": spec.image.base, "family": spec.image.family, "architecture": spec.image.architecture, "volume": spec.image.volume,
                  **({"accelerator": spec.image.accelerator} if spec.image.accelerator != "none" else {})},
        "storage": storage,
        "awscli": {"prefix": spec.awscli.prefix},
        "batch": {
            "instance_types": list(spec.batch.instance_types),
            "min_vcpus": spec.batch.min_vcpus,
            "max_vcpus": spec.batch.max_vcpus,
            "provisioning": spec.batch.provisioning,
            "allocation_strategy": spec.batch.allocation_strategy,
            "spot_bid_percentage": spec.batch.spot_bid_percentage,
        },
        # `containers` only when given, so specs without it keep their hash
        "nextflow": {"process": spec.nextflow.process,
                     **({"containers": list(spec.nextflow.containers)} if spec.nextflow.containers else {}),
                     **({"gpus": spec.nextflow.gpus} if spec.nextflow.gpus is not None else {})},
        # `distribute` only when given, so specs without it keep their hash
        **({"distribute": spec.distribute.to_json()} if spec.distribute is not None else {}),
    }


# ---------------------------------------------------------------------------------------
# Entry points


def check_file(path: Path) -> FileResult:
    """Every problem in one spec file; the TaskSpec when there are none."""
    file = display(path)
    result = FileResult(path=path)
    try:
        doc = read_yaml(path)
    except YamlProblem as exc:
        result.problems.append(Problem(file, "", str(exc)))
        return result
    except IsADirectoryError:
        result.problems.append(Problem(file, "", "is a directory, not a spec file"))
        return result
    except OSError as exc:
        raise UsageError(f"{file}: cannot read ({exc.strerror or exc})") from None
    if not isinstance(doc, dict):
        result.problems.append(Problem(file, "", f"the top level must be a mapping of keys (name:, description:, storage: ...), not {_type_name(doc)}"))
        return result
    bad_keys = [k for k in _walk_keys(doc) if not isinstance(k, str)]
    if bad_keys:
        result.problems.append(Problem(file, "", f"keys must be text; found {bad_keys[0]!r}"))
        return result
    # YAML 1.1 reads a bare `off` as false: `storage.instance_store: off` means "off".
    if isinstance(doc.get("storage"), dict) and doc["storage"].get("instance_store") is False:
        doc["storage"]["instance_store"] = "off"
    # YAML reads .nan and .inf as numbers that pass every comparison the schema makes
    # (nan > 0 is False, and so is nan <= 0): refuse them here, by field.
    result.problems += [Problem(file, where, f"must be a finite number, not {value!r}") for where, value in _non_finite(doc)]
    faulted = {p.field for p in result.problems}
    result.problems += [p for p in _schema_problems(doc, file) if p.field not in faulted]
    # Semantic rules read only values of the right type, so they run beside schema errors;
    # a field the schema already faulted is not reported twice.
    faulted = {p.field for p in result.problems}
    result.problems += [p for p in _semantic_problems(doc, path, file) if p.field not in faulted]
    if not result.problems:
        spec = _build(doc, path)
        # "Within EBS limits" means the volume the spec asks for, not only its input: size
        # it (pure Python, milliseconds) and report a spec no gp3 volume can hold.
        from factory.instance_store import InstanceStoreRefused
        from factory.sizing import size_task

        try:
            plan = size_task(spec)
        except InstanceStoreRefused as exc:
            result.problems += [Problem(file, f"batch.instance_types[{i}]", message) for i, message in exc.refusals]
        except SizingError as exc:
            message = exc.message
            for prefix in (f"{spec.path}: ", f"{path}: "):
                message = message.removeprefix(prefix)
            result.problems.append(Problem(file, "storage", f"cannot be sized: {message}"))
        else:
            grow = spec.storage.grow
            if grow is not None and plan.volume_gib > grow.max_gib:
                result.problems.append(Problem(
                    file, "storage.grow.max_gib",
                    f"{grow.max_gib} GiB is less than the data volume the task starts with ({plan.volume_gib} GiB, "
                    f"see `factory size {spec.name}`); set it to at least {plan.volume_gib}",
                ))
            else:
                result.spec = spec
    return result


def _non_finite(node: Any, path: tuple[Any, ...] = ()) -> Iterable[tuple[str, float]]:
    """(field path, value) of every NaN or infinite number in the document."""
    if isinstance(node, float) and not math.isfinite(node):
        yield _path_str(path), node
    elif isinstance(node, dict):
        for k, v in node.items():
            yield from _non_finite(v, path + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _non_finite(v, path + (i,))


def _walk_keys(node: Any) -> Iterable[Any]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _walk_keys(v)
    elif isinstance(node, list):
        for item in node:
            yield from _walk_keys(item)


def spec_files(paths: Iterable[Path]) -> list[Path]:
    """Expand files and folders into spec files. Missing paths and empty folders are usage errors."""
    out: list[Path] = []
    for p in paths:
        if not p.exists():
            raise UsageError(f"{p}: no such file or folder")
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in SPEC_SUFFIXES and f.is_file())
            if not found:
                raise UsageError(f"{p}: no spec files (*.yaml) in this folder")
            out += found
        else:
            out.append(p)
    return out


def validate_paths(paths: Iterable[Path]) -> Report:
    return Report([check_file(p) for p in spec_files(paths)])


def load_spec(path: Path) -> TaskSpec:
    result = check_file(path)
    if result.spec is None:
        raise SpecError(result.problems)
    return result.spec


def load_specs(paths: Iterable[Path]) -> list[TaskSpec]:
    report = validate_paths(paths)
    if not report.valid:
        raise SpecError(report.problems)
    specs = [r.spec for r in report.results if r.spec is not None]
    names = [s.name for s in specs]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"task {dupes[0]} is given twice; pass each spec once")
    return specs


def find_spec(task: str, specs_dir: Path = Path("specs")) -> TaskSpec:
    """The spec for TASK: `specs_dir/TASK.yaml` (or a path to a spec file)."""
    return load_spec(find_spec_file(task, specs_dir))


def find_spec_file(task: str, specs_dir: Path = Path("specs")) -> Path:
    """The spec file for TASK (`specs_dir/TASK.yaml`, or a path to a spec file), not yet checked."""
    candidate = Path(task)
    if candidate.suffix in SPEC_SUFFIXES and candidate.is_file():
        return candidate
    for suffix in SPEC_SUFFIXES:
        path = specs_dir / f"{task}{suffix}"
        if path.is_file():
            return path
    if not specs_dir.is_dir():
        raise UsageError(f"no specs folder at {specs_dir}; run from the repository root or pass --specs-dir")
    known = sorted(p.stem for p in specs_dir.iterdir() if p.suffix in SPEC_SUFFIXES)
    hint = _suggest(task, known) or (f"; known tasks: {', '.join(known)}" if known else "")
    raise UsageError(f"no spec for task {task!r} in {specs_dir}/{hint}")


def benchmarks_file(spec_path: Path) -> Path | None:
    """Where a spec's `storage.benchmarks` points (resolved against the spec's folder), or None when it names none.

    Reads only that field, so it works while the file is still missing or has too few runs
    for the spec to validate (`factory measure` is how those runs are made).
    """
    file = display(spec_path)
    try:
        doc = read_yaml(spec_path)
    except YamlProblem as exc:
        raise SpecError([Problem(file, "", str(exc))]) from None
    storage = doc.get("storage") if isinstance(doc, dict) else None
    bench = storage.get("benchmarks") if isinstance(storage, dict) else None
    if bench is None:
        return None
    if not isinstance(bench, str) or not bench.strip():
        raise SpecError([Problem(file, "storage.benchmarks", "must be the path of a CSV file, relative to the spec")])
    return (spec_path.parent / bench).resolve()
