"""The summary of a `bake --all` (build/bake-summary.json, and `--json`): every task's
result, whether all went well, and the failures several tasks share, each said once."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from factory.bake.result import BakeResult


def shared_errors(results: Sequence[BakeResult]) -> list[str]:
    """The failures shared by several tasks, each once, in the order first met."""
    return list(dict.fromkeys(r.shared_error for r in results if r.shared_error))


def summary_json(results: Sequence[BakeResult]) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ok": all(r.status != "failed" for r in results),
        "results": [r.to_json() for r in results],
    }
    shared = shared_errors(results)
    if shared:
        data["shared_errors"] = shared
    return data


def write_summary(results: Sequence[BakeResult], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary_json(results), indent=2, sort_keys=True, default=str) + "\n")
    return path
