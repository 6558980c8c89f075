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
                f"YAML aliases (*{event.anchor}) are not allowed in specs; write the value out",
                mark.line + 1,
                mark.column + 1,
            )
        depth = getattr(self, "_depth", 0) + 1
        if depth > MAX_DEPTH:
            mark = self.peek_event().start_mark
            raise YamlProblem(f"nested deeper than {MAX_DEPTH} levels; a spec is a shallow mapping", mark.line + 1, mark.column + 1)
        self._depth = depth
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth = depth - 1

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
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


def read_yaml(path: Path) -> Any:
    """Parse one YAML file. Raises OSError for unreadable files, YamlProblem for bad content."""
    with open(path, "rb") as fh:
        data = fh.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlProblem(f"file is larger than {MAX_BYTES // 1024} KiB; a spec is a few lines of YAML")
    if b"\x00" in data:
        raise YamlProblem("not a text file (it contains NUL bytes)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise YamlProblem(f"not UTF-8 text (byte {exc.start}); save the spec as UTF-8") from None
    if not text.strip() or all(line.lstrip().startswith("#") or not line.strip() for line in text.splitlines()):
        raise YamlProblem("file is empty; a spec needs at least `name`, `description` and `storage`")
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
        raise YamlProblem("nested too deeply; a spec is a shallow mapping") from None
