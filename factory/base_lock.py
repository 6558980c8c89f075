"""The lock file of base AMIs (`factory.lock`): which ECS-optimized AMI each base is, per region.

A bake used to read the family's ECS-optimized SSM parameter at bake time, so two bakes of
one commit could start from different bases, and a base AWS rolled back
(awslabs/amazon-eks-ami#924) looked like a new one. aws/amazon-ecs-ami commits its resolved
sources instead (`release-al2023.auto.pkrvars.hcl`) and a weekday workflow bumps them in a
pull request; this is factory's equivalent.

A base is keyed by (family, architecture, accelerator) (`base_of`, the one place that names
a spec's base and its parameter). Per base the lock holds the SSM parameter (the
`.../recommended` one, whose value is a JSON document: image_id, image_name,
ecs_agent_version, ecs_runtime_version, image_version, os, source_image_name, ...), the
image name (the same in every region: aws/amazon-ecs-ami pins by name for that reason) and
the other fields of that JSON, and per region the image id with the parameter's version and
last-modified date there (AWS's version numbers differ per region).

- `lock_bases` (`factory lock`): every base the specs use, in every region they (and
  `regions`) name: a base or region missing from the lock is resolved and added, the rest
  kept; `update=True` (`factory lock --update`) re-resolves everything and says what moved.
- `ensure` (`factory bake`): the same for the bases of the specs being baked; `refresh`
  re-resolves them.
- `check_images`: one DescribeImages per region over every locked image a run needs: a
  deprecated or deregistered one is an error naming the entry and `factory lock --update`.
- `recommended_now` / `compare` (`factory status`): what AWS recommends now against the lock
  (a newer base, or one that went backwards).

The text is deterministic: same answers, same bytes (sorted keys, no time of the run).
The lock of real AWS is `factory.lock` at the repository root (committed); the local
cloud's ids are its own, so its lock lives in its state folder (`.factory/factory.lock`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from factory.errors import FactoryError

LOCK_FILE = "factory.lock"
LOCK_FORMAT = 1
NAMES_PER_GET = 10  # GetParameters takes at most ten names (SSM API reference)
UPDATE_COMMAND = "factory lock --update"
HEADER = (
    "# factory.lock: the base AMIs factory bakes on, per base and region (docs/register.md, \"The base lock\").\n"
    "# Written by `factory lock`; `factory lock --update` moves it to what AWS recommends now. Do not edit by hand.\n"
)


@dataclass(frozen=True, order=True)
class BaseKey:
    family: str  # al2023 | al2 | al1
    architecture: str  # x86_64 | arm64
    accelerator: str = "none"  # none | nvidia

    @property
    def name(self) -> str:
        """The lock's key for this base, e.g. `al2023-x86_64` (`al2023-x86_64-nvidia`)."""
        suffix = "" if self.accelerator == "none" else f"-{self.accelerator}"
        return f"{self.family}-{self.architecture}{suffix}"


def base_of(spec: Any) -> tuple[BaseKey, str | None]:
    """A spec's base key and the SSM parameter that names it (None: the family has no
    such image). The one place both are derived from a spec."""
    image = spec.image
    return BaseKey(image.family, image.architecture, image.accelerator), recommended_parameter(image.base_parameter)


def recommended_parameter(name: str | None) -> str | None:
    """The `.../recommended` parameter (a JSON document) of a `.../recommended/image_id` one."""
    if not name:
        return None
    return name[: -len("/image_id")] if name.endswith("/image_id") else name


@dataclass
class RegionEntry:
    image_id: str
    parameter_version: int | None = None
    last_modified: str | None = None  # the parameter's LastModifiedDate, ISO 8601 UTC

    def to_doc(self) -> dict[str, Any]:
        return {"image_id": self.image_id, "parameter_version": self.parameter_version, "last_modified": self.last_modified}


@dataclass
class LockEntry:
    key: BaseKey
    parameter: str
    image_name: str
    fields: dict[str, Any]  # the parameter's JSON value, without image_id and image_name
    regions: dict[str, RegionEntry] = field(default_factory=dict)

    def to_doc(self) -> dict[str, Any]:
        return {
            "family": self.key.family, "architecture": self.key.architecture, "accelerator": self.key.accelerator,
            "parameter": self.parameter, "image_name": self.image_name, "fields": dict(self.fields),
            "regions": {r: e.to_doc() for r, e in self.regions.items()},
        }


@dataclass
class Resolved:
    """One region's answer for one base: the parameter's value, version and date."""

    image_id: str
    image_name: str
    fields: dict[str, Any]
    version: int | None
    last_modified: str | None

    def region_entry(self) -> RegionEntry:
        return RegionEntry(self.image_id, self.version, self.last_modified)


@dataclass
class Change:
    """What `factory lock --update` (or a refresh) moved, for one base in one region."""

    base: str
    region: str
    old_name: str | None
    new_name: str
    old_agent: str | None
    new_agent: str | None
    old_image: str | None
    new_image: str
    direction: str  # "new" | "newer" | "backwards" | "changed"

    def text(self) -> str:
        if self.old_name is None:
            return f"{self.base} in {self.region}: added {self.new_name} ({self.new_image}, ECS agent {self.new_agent or '?'})"
        agent = f"ECS agent {self.old_agent or '?'} -> {self.new_agent or '?'}" if self.old_agent != self.new_agent else f"ECS agent {self.new_agent or '?'}"
        back = " (backwards: AWS rolled the parameter back)" if self.direction == "backwards" else ""
        return f"{self.base} in {self.region}: {self.old_name} -> {self.new_name}{back} ({self.old_image} -> {self.new_image}; {agent})"


@dataclass
class BaseLock:
    """The lock file's content; `path` is where it is read from and written to."""

    path: Path
    bases: dict[str, LockEntry] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a run added or moved (said by the CLI)
    changed: bool = False

    def image_id(self, key: BaseKey, region: str) -> str | None:
        entry = self.bases.get(key.name)
        found = entry.regions.get(region) if entry else None
        return found.image_id if found else None

    def text(self) -> str:
        import yaml

        doc = {"format": LOCK_FORMAT, "bases": {name: e.to_doc() for name, e in self.bases.items()}}
        return HEADER + yaml.safe_dump(doc, sort_keys=True, default_flow_style=False, allow_unicode=True, width=1000)

    def save(self) -> None:
        """Write the lock (whole, through a rename: never half-written)."""
        import os
        import tempfile

        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(self.text())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.changed = False


def default_path(cloud: Any) -> Path:
    """Real AWS: `./factory.lock` (committed). The local cloud: its state folder's, since
    its AMI ids are its own (a lock of them is wrong for AWS)."""
    if getattr(cloud, "kind", "aws") == "local" and getattr(cloud, "local", None) is not None:
        return Path(cloud.local.state_dir) / LOCK_FILE
    return Path(LOCK_FILE)


def load(path: Path) -> BaseLock:
    """The lock at `path` (an empty one when there is no file); a damaged file is an error naming it."""
    import yaml

    path = Path(path)
    lock = BaseLock(path)
    if not path.exists():
        return lock
    fix = "fix it, or delete it and run `factory lock` to write it again"
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise FactoryError(f"{path}: not a readable lock file ({str(exc).splitlines()[0]}): {fix}") from None
    if not isinstance(doc, dict) or doc.get("format") != LOCK_FORMAT or not isinstance(doc.get("bases") or {}, dict):
        raise FactoryError(f"{path}: not a factory lock file of format {LOCK_FORMAT}: {fix}")
    for name, e in (doc.get("bases") or {}).items():
        where = f"{path}: bases.{name}"
        try:
            key = BaseKey(str(e["family"]), str(e["architecture"]), str(e.get("accelerator") or "none"))
            regions = {str(r): RegionEntry(str(v["image_id"]), v.get("parameter_version"), v.get("last_modified"))
                       for r, v in (e.get("regions") or {}).items()}
            entry = LockEntry(key, str(e["parameter"]), str(e["image_name"]), dict(e.get("fields") or {}), regions)
        except (KeyError, TypeError, AttributeError) as exc:
            raise FactoryError(f"{where}: missing or malformed field ({exc}): {fix}") from None
        if key.name != name:
            raise FactoryError(f"{where}: the entry is of base {key.name}, not {name}: {fix}")
        lock.bases[name] = entry
    return lock


# -- what the specs need ---------------------------------------------------------------


@dataclass
class Want:
    key: BaseKey
    parameter: str
    regions: set[str]
    source: str  # a spec that uses it, for messages


def wanted(specs: Sequence[Any], regions: Iterable[str] = (), more: Mapping[str, Iterable[str]] | None = None) -> dict[str, Want]:
    """base name -> what the specs need of it: its parameter and regions (each spec's own,
    plus `regions`: where the images are distributed, for every base; `more`: task -> the
    regions its image is distributed to, `distribute:`). Pinned `ami-...` bases need no lock."""
    extra = sorted(set(regions))
    out: dict[str, Want] = {}
    for spec in specs:
        if spec.image.pinned_ami:
            continue
        key, parameter = base_of(spec)
        if not parameter:
            raise FactoryError(
                f"{spec.path}: image.architecture: {spec.image.family_info.label} has no {spec.image.architecture} image; "
                "use x86_64 or another image.base"
            )
        want = out.setdefault(key.name, Want(key, parameter, set(extra), str(spec.path)))
        want.regions.add(spec.region)
        want.regions.update((more or {}).get(spec.name, ()))
    return out


# -- resolving ---------------------------------------------------------------------------


def read_recommended(ssm: Any, names: Sequence[str], region: str) -> dict[str, Resolved | None]:
    """parameter -> its answer in `region` (None when the region has no such parameter):
    GetParameters, ten names to a call (it has no paging: each call answers for all it names)."""
    from factory.aws import aws_errors

    out: dict[str, Resolved | None] = {}
    wanted_names = list(dict.fromkeys(names))
    for i in range(0, len(wanted_names), NAMES_PER_GET):
        chunk = wanted_names[i : i + NAMES_PER_GET]
        with aws_errors(f"reading the ECS-optimized AMI parameters in {region}"):
            answer = ssm.get_parameters(Names=chunk)  # at most ten names, one answer for all: no paging
        out.update(dict.fromkeys(chunk))
        for p in answer.get("Parameters") or []:
            out[p["Name"]] = parse_value(p["Name"], p.get("Value") or "", p.get("Version"), p.get("LastModifiedDate"), region)
    return out


def parse_value(name: str, value: str, version: Any, modified: Any, region: str) -> Resolved:
    """The JSON document of an ECS-optimized `.../recommended` parameter (AWS, "Retrieving
    Amazon ECS-optimized Linux AMI metadata": image_id, image_name, ecs_agent_version, ...)."""
    from factory.errors import AwsError

    try:
        doc = json.loads(value)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not re.fullmatch(r"ami-[0-9a-f]+", str(doc.get("image_id", ""))) or not doc.get("image_name"):
        raise AwsError(f"SSM parameter {name} in {region} does not hold the JSON of an ECS-optimized AMI "
                       f"(image_id, image_name, ...): it says {value[:80]!r}")
    fields = {k: v for k, v in sorted(doc.items()) if k not in ("image_id", "image_name")}
    return Resolved(str(doc["image_id"]), str(doc["image_name"]), fields, int(version) if version is not None else None, _iso(modified))


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def resolve(wants: dict[str, Want], cloud: Any, names: Iterable[str] | None = None) -> dict[str, dict[str, Resolved]]:
    """base name -> region -> AWS's answer now, for `names` (default every wanted base):
    one batch of GetParameters per region. A parameter a region lacks is an error naming it."""
    chosen = [wants[n] for n in (names if names is not None else wants)]
    by_region: dict[str, list[Want]] = {}
    for w in chosen:
        for region in w.regions:
            by_region.setdefault(region, []).append(w)
    out: dict[str, dict[str, Resolved]] = {}
    for region in sorted(by_region):
        answers = read_recommended(cloud.clients(region).ssm(), sorted({w.parameter for w in by_region[region]}), region)
        for w in by_region[region]:
            found = answers.get(w.parameter)
            if found is None:
                raise FactoryError(f"{w.source}: base {w.key.name}: AWS has no SSM parameter {w.parameter} in {region} "
                                   "(this region offers no such ECS-optimized AMI): pick another region or image.base")
            out.setdefault(w.key.name, {})[region] = found
    return out


def _change(entry: LockEntry | None, name: str, region: str, answer: Resolved) -> Change | None:
    """What recording `answer` for (base, region) moves, against the lock's `entry` before the run (None: nothing)."""
    old = entry.regions.get(region) if entry else None
    if old is not None and old.image_id == answer.image_id and entry is not None and entry.image_name == answer.image_name:
        return None
    return Change(
        base=name, region=region,
        old_name=entry.image_name if entry and old else None, new_name=answer.image_name,
        old_agent=entry.fields.get("ecs_agent_version") if entry and old else None, new_agent=answer.fields.get("ecs_agent_version"),
        old_image=old.image_id if old else None, new_image=answer.image_id,
        direction="new" if old is None or entry is None else compare(entry.image_name, answer.image_name),
    )


def _record(lock: BaseLock, want: Want, by_region: dict[str, Resolved]) -> None:
    """Put one base's answers in the lock. A new image (name, or fields) replaces the entry:
    the ids of regions not answered now were of the old image."""
    first = by_region[sorted(by_region)[0]]
    entry = lock.bases.get(want.key.name)
    before = entry.to_doc() if entry is not None else None  # before the regions below change it in place
    if entry is None or entry.image_name != first.image_name or entry.fields != first.fields:
        entry = LockEntry(want.key, want.parameter, first.image_name, dict(first.fields), {})
    entry.parameter = want.parameter
    for region, answer in by_region.items():
        entry.regions[region] = answer.region_entry()
    entry.regions = dict(sorted(entry.regions.items()))
    lock.bases[want.key.name] = entry
    lock.bases = dict(sorted(lock.bases.items()))
    if before != entry.to_doc():
        lock.changed = True


def lock_bases(specs: Sequence[Any], cloud: Any, lock: BaseLock, *, update: bool = False, regions: Iterable[str] = (),
               only: Iterable[str] | None = None, more: Mapping[str, Iterable[str]] | None = None) -> list[Change]:
    """Make `lock` hold every base `specs` use in every region they (and `regions`) need.
    Without `update`, what the lock has is kept and only what it lacks is resolved; with
    `update`, every needed base (or those named in `only`) is resolved again. Bases no spec
    uses are dropped only by a whole `factory lock` (`prune_unused`). `more`: task -> its
    distribution's regions (`distribution_regions`). Returns what moved."""
    wants = wanted(specs, regions, more)
    pick = set(only) if only is not None else None
    todo: dict[str, Want] = {}
    by_name: dict[str, Want] = {}  # locked bases a region is added to: found there by their image name
    for name, w in wants.items():
        entry = lock.bases.get(name)
        if update and (pick is None or name in pick):
            todo[name] = w
        elif entry is None or not entry.regions:
            todo[name] = w
        elif any(r not in entry.regions for r in w.regions):
            by_name[name] = Want(w.key, w.parameter, {r for r in w.regions if r not in entry.regions}, w.source)
    if not todo and not by_name:
        return []
    answers = resolve(todo, cloud) if todo else {}
    answers.update(resolve_by_name(lock, by_name, cloud))
    todo.update(by_name)
    changes: list[Change] = []
    for name in sorted(answers):
        by_region = answers[name]
        names = {a.image_name for a in by_region.values()}
        entry = lock.bases.get(name)
        if len(names) > 1:
            have = ", ".join(f"{r}: {a.image_name}" for r, a in sorted(by_region.items()))
            raise FactoryError(f"base {name}: AWS recommends different images in different regions ({have}), as while it rolls "
                               f"a release out region by region: run `{UPDATE_COMMAND}` again later")
        for region in sorted(by_region):
            change = _change(entry, name, region, by_region[region])
            if change is not None:
                changes.append(change)
        _record(lock, todo[name], by_region)
    return changes


def resolve_by_name(lock: BaseLock, wants: dict[str, Want], cloud: Any) -> dict[str, dict[str, Resolved]]:
    """A locked base in regions it lacks, found there by its image name (the same in every
    region: aws/amazon-ecs-ami pins its sources by name for this): one paged DescribeImages
    of Amazon's images per region, deprecated ones included. Such a region has no parameter
    version or date (the parameter was not what named it)."""
    from factory.aws import aws_errors
    from factory.register.reads import paged

    by_region: dict[str, list[str]] = {}
    for name, w in wants.items():
        for region in w.regions:
            by_region.setdefault(region, []).append(name)
    out: dict[str, dict[str, Resolved]] = {}
    for region in sorted(by_region):
        names = {lock.bases[n].image_name: n for n in by_region[region]}
        with aws_errors(f"finding the locked base images by name in {region}"):
            found = paged(cloud.clients(region).ec2(), "describe_images", "Images", Owners=["amazon"], IncludeDeprecated=True,
                          Filters=[{"Name": "name", "Values": sorted(names)}])
        ids = {i.get("Name"): i["ImageId"] for i in sorted(found, key=lambda i: (i.get("CreationDate", ""), i["ImageId"]))}
        for image_name, base in sorted(names.items()):
            if image_name not in ids:
                raise FactoryError(f"{wants[base].source}: base {base}: the lock's image {image_name} is not in {region} "
                                   f"(AWS publishes each release in every region, and deregisters old ones): run `{UPDATE_COMMAND}`")
            entry = lock.bases[base]
            out.setdefault(base, {})[region] = Resolved(ids[image_name], image_name, dict(entry.fields), None, None)
    return out


def prune_unused(specs: Sequence[Any], lock: BaseLock, regions: Iterable[str] = (),
                 more: Mapping[str, Iterable[str]] | None = None) -> list[str]:
    """Drop the bases (and regions) no spec uses: what a whole `factory lock` leaves."""
    wants = wanted(specs, regions, more)
    dropped = []
    for name in list(lock.bases):
        if name not in wants:
            dropped.append(name)
            del lock.bases[name]
            lock.changed = True
            continue
        entry = lock.bases[name]
        for region in list(entry.regions):
            if region not in wants[name].regions:
                dropped.append(f"{name} in {region}")
                del entry.regions[region]
                lock.changed = True
    return dropped


def distribution_regions(specs: Sequence[Any], config: Any) -> dict[str, tuple[str, ...]]:
    """task -> the regions its image is distributed to (factory.yaml's `distribute:`, the
    spec's over it): its base is locked there too, by the same image name. A spec whose
    distribution is refused is left out here: the bake refuses it with its own message."""
    from factory.config import ConfigError

    out: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        try:
            out[spec.name] = config.distribution_for(spec).targets(spec.region)
        except ConfigError:
            continue
    return out


def ensure(specs: Sequence[Any], cloud: Any, lock: BaseLock, *, refresh: bool = False,
           more: Mapping[str, Iterable[str]] | None = None) -> list[Change]:
    """For a bake: every base of `specs` in the lock (a missing one resolved and added, said
    in `lock.notes`), in each spec's region and the regions its image is distributed to
    (`more`); `refresh` re-resolves the bases of `specs`."""
    before = set(lock.bases)
    wants = wanted(specs)
    changes = lock_bases(specs, cloud, lock, update=refresh, only=list(wants) if refresh else None, more=more)
    for c in changes:
        if c.old_name is None and c.base not in before:
            lock.notes.append(f"base {c.base} was not in {lock.path}: added to it: {c.text()}")
        elif c.old_name is None:
            lock.notes.append(f"base {c.base} had no image in {c.region} in {lock.path}: added (the locked image, by name): {c.text()}")
        else:
            lock.notes.append(f"--refresh moved base {c.text()}")
    return changes


# -- the locked images exist ------------------------------------------------------------


def check_images(lock: BaseLock, needs: dict[str, set[str]], cloud: Any, now: datetime | None = None) -> dict[tuple[str, str], str]:
    """(base name, region) -> why its locked image cannot be baked on (deprecated,
    deregistered, gone), for `needs` (region -> base names). One DescribeImages per region,
    with IncludeDeprecated: AWS hides a deprecated AMI of another owner without it (EC2 API
    reference, DescribeImages `IncludeDeprecated`)."""
    from botocore.exceptions import ClientError

    from factory.aws import aws_errors, error_code, error_message

    now = now or datetime.now(UTC)
    problems: dict[tuple[str, str], str] = {}
    for region in sorted(needs):
        ids = {lock.bases[n].regions[region].image_id: n for n in sorted(needs[region])
               if n in lock.bases and region in lock.bases[n].regions}
        if not ids:
            continue
        ask = sorted(ids)
        images: list[dict[str, Any]] = []
        with aws_errors(f"reading the locked base AMIs in {region}"):
            while ask:
                try:
                    # Every id named, so every answer at once: no paging (MaxResults) needed.
                    images = cloud.clients(region).ec2().describe_images(ImageIds=ask, IncludeDeprecated=True).get("Images", [])  # ids named: every answer at once
                    break
                except ClientError as exc:
                    if not error_code(exc).startswith("InvalidAMIID"):
                        raise
                    gone = set(re.findall(r"ami-[0-9a-f]+", error_message(exc))) & set(ask)
                    if not gone:
                        gone = set(ask)  # an answer naming none: every one is unknown
                    ask = [a for a in ask if a not in gone]
        found = {i["ImageId"]: i for i in images}
        for ami, name in ids.items():
            entry = lock.bases[name]
            where = f"{lock.path}: bases.{name}.regions.{region}: {ami} ({entry.image_name})"
            image = found.get(ami)
            state = (image or {}).get("State")
            if image is None or state in ("deregistered", "disabled"):
                why = f"is {state}" if state else "is deregistered (DescribeImages does not know it)"
                problems[(name, region)] = f"{where} {why}: run `{UPDATE_COMMAND}` to lock the base AWS recommends now"
                continue
            deprecated = _when(image.get("DeprecationTime"))
            if deprecated is not None and deprecated <= now:
                problems[(name, region)] = (f"{where} is deprecated since {image['DeprecationTime']}: "
                                            f"run `{UPDATE_COMMAND}` to lock the base AWS recommends now")
    return problems


def _when(value: Any) -> datetime | None:
    if not value:
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None


# -- the lock against what AWS recommends now ---------------------------------------------


def _version_key(name: str) -> list[Any]:
    """An image name as a list of numbers and text, so `2023.0.20260922` < `2023.0.20261001`."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


def compare(locked_name: str | None, recommended_name: str) -> str:
    """"same", "newer" (AWS recommends a later image), "backwards" (an earlier one: AWS rolled
    the parameter back, awslabs/amazon-eks-ami#924) or "changed" (names that do not order)."""
    if locked_name is None:
        return "new"
    if locked_name == recommended_name:
        return "same"
    try:
        return "newer" if _version_key(recommended_name) > _version_key(locked_name) else "backwards"
    except TypeError:
        return "changed"


@dataclass
class BaseStatus:
    """One base in one region: what the lock holds and what AWS recommends now."""

    base: str
    region: str
    locked_image: str | None
    locked_name: str | None
    recommended_image: str | None
    recommended_name: str | None
    state: str  # same | newer | backwards | changed | new (not in the lock) | missing (AWS has no parameter)

    def text(self) -> str:
        if self.state == "missing":
            return f"base {self.base} in {self.region}: AWS has no recommended image here"
        if self.state == "new":
            return f"base {self.base} in {self.region}: not in the lock; a bake adds {self.recommended_name} ({self.recommended_image})"
        if self.state == "same":
            return f"base {self.base} in {self.region}: the lock's {self.locked_name} is what AWS recommends"
        how = {"newer": "a newer base", "backwards": "an older base (AWS rolled its parameter back)", "changed": "another base"}[self.state]
        return (f"base {self.base} in {self.region}: AWS recommends {how}, {self.recommended_name} ({self.recommended_image}), "
                f"than the lock's {self.locked_name} ({self.locked_image}): `{UPDATE_COMMAND}` moves the lock")

    def to_json(self) -> dict[str, Any]:
        return {"base": self.base, "region": self.region, "locked_image": self.locked_image, "locked_name": self.locked_name,
                "recommended_image": self.recommended_image, "recommended_name": self.recommended_name, "state": self.state}


def status_of(lock: BaseLock, key: BaseKey, region: str, recommended: Resolved | None) -> BaseStatus:
    entry = lock.bases.get(key.name)
    here = entry.regions.get(region) if entry else None
    locked_name = entry.image_name if here else None
    if recommended is None:
        state = "missing"
    elif here is None:
        state = "new"
    elif here.image_id == recommended.image_id:
        state = "same"
    else:
        state = compare(locked_name, recommended.image_name)
        state = "changed" if state == "same" else state
    return BaseStatus(key.name, region, here.image_id if here else None, locked_name,
                      recommended.image_id if recommended else None, recommended.image_name if recommended else None, state)
