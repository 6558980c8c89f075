"""Read a YAML spec defensively: size, encoding, depth, aliases and duplicate keys.

Specs are short, hand-written mappings. Anything else (binary junk, a 50 MB value, a
billion-laughs alias bomb, 10,000 nested lists) is refused quickly with a message that
says where and why, instead of a traceback or a hang.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 256 * 1024  # a spec is a few hundred bytes; 256 KiB is already absurd
MAX_DEPTH = 32
# Items in one list or mapping. A spec's longest list (batch.instance_types) has a few
# entries; a cap keeps schema checks such as uniqueItems (quadratic on unhashable items)
# and the error report itself small and fast.
MAX_ITEMS = 256
# Digits in one number: Python refuses to convert more than 4300, and no size needs 30.
MAX_NUMBER_CHARS = 64


@dataclass
class YamlProblem(Exception):
    """Where (line/column, 1-based, when known) and what is wrong with the YAML text."""

    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = f"line {self.line}, column {self.column}: " if self.line else ""
        return where + self.message


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases, duplicate keys and deep nesting."""

    def compose_node(self, parent, index):  # type: ignore[override]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise YamlProblem(
                f"YAML aliases (*{event.anchor}) are not allowed in specs or configs; write the value out",
                mark.line + 1,
                mark.column + 1,
            )
        if parent is not None and len(parent.value) >= MAX_ITEMS:
            self._check_items(parent, more=True)  # stop composing a huge collection early
        depth = getattr(self, "_depth", 0) + 1
        if depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels; specs and configs are shallow mappings", mark.line + 1, mark.column + 1)
        self._depth = depth
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth - 1

    @staticmethod
    def _check_items(node, more: bool = False) -> None:
        if more or len(node.value) > MAX_ITEMS:
            mark = node.start_mark
            kind = "mapping" if isinstance(node, yaml.MappingNode) else "list"
            count = f"more than {MAX_ITEMS}" if more else f"{len(node.value)}"
            raise YamlProblem(
                f"a {kind} of {count} items (at most {MAX_ITEMS}); specs and configs are short lists and mappings",
                mark.line + 1,
                mark.column + 1,
            )

    def construct_sequence(self, node, deep=False):  # type: ignore[override]
        self._check_items(node)
        return super().construct_sequence(node, deep=deep)

    def construct_scalar(self, node):  # type: ignore[override]
        value = super().construct_scalar(node)
        tag = getattr(node, "tag", "")
        if tag in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float") and len(value) > MAX_NUMBER_CHARS:
            mark = node.start_mark
            raise YamlProblem(
                f"a number of {len(value)} characters (at most {MAX_NUMBER_CHARS}); write sizes in GiB as plain numbers",
                mark.line + 1,
                mark.column + 1,
            )
        return value

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        self._check_items(node)
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError:
                mark = key_node.start_mark
                raise YamlProblem("a mapping key must be a plain value", mark.line + 1, mark.column + 1) from None
            if key in seen:
                mark = key_node.start_mark
                raise YamlProblem(
                    f"duplicate key {key!r} (first at line {seen[key]}); keep one",
                    mark.line + 1,
                    mark.column + 1,
                )
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


EMPTY_SPEC = "file is empty; a spec needs at least `name`, `description` and `storage`"


def read_yaml(path: Path, *, what: str = "a spec", empty: str | None = EMPTY_SPEC) -> Any:
    """Parse one YAML file. Raises OSError for unreadable files, YamlProblem for bad content.

    `what` names the kind of file in messages; `empty` is the message for a file with no
    content, or None to return None for one (a config file may be empty).
    """
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlProblem(f"file is larger than {MAX_BYTES // 1024} KiB; {what} is a few lines of YAML")
    if b"\x00" in data:
        raise YamlProblem("not a text file (it contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlProblem(f"not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    if not text.strip() or all(line.lstrip().startswith("#") or not line.strip() for line in text.splitlines()):
        if empty is None:
            return None
        raise YamlProblem(empty)
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        if mark is None:
            raise YamlProblem(f"YAML syntax error: {problem}") from None
        raise YamlProblem(f"YAML syntax error: {problem}", mark.line + 1, mark.column + 1) from None
    except yaml.YAMLError as exc:
        raise YamlProblem(f"YAML error: {exc}") from None
    except RecursionError:
        raise YamlProblem(f"nested too deeply; {what} is a shallow mapping") from None
    except (ValueError, OverflowError) as exc:  # a scalar the constructors cannot convert
        raise YamlProblem(f"a value YAML cannot convert: {exc}") from None
