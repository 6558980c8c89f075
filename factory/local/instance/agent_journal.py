"""What the grow agent did on a local instance, in a few lines for the person rehearsing.

The agent writes one JSON object per event to its journal (ansible/roles/grow_agent,
`factory_grow.agent`). A rehearsal that did not fit is only half a story without them:
whether the agent triggered, how long each add took, what AWS refused and how often it
was retried. `summary(journal_text)` turns the journal into those lines; lines that are
not the agent's JSON (a traceback, a restart notice) are counted, not parsed.
"""

from __future__ import annotations

import datetime
import json
from collections import Counter
from typing import Any


def events(journal_text: str) -> tuple[list[dict[str, Any]], int]:
    """The agent's events in order, and how many other lines the journal holds."""
    found: list[dict[str, Any]] = []
    other = 0
    for line in journal_text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            event = json.loads(line)
        except ValueError:
            other += 1
            continue
        if isinstance(event, dict) and "event" in event:
            found.append(event)
        else:
            other += 1
    return found, other


def operation_name(snake: str) -> str:
    """`create_volume` -> `ec2:CreateVolume` (the agent logs botocore's method names)."""
    return "ec2:" + "".join(part.capitalize() for part in snake.split("_"))


def _seconds_between(earlier: dict[str, Any], later: dict[str, Any]) -> float | None:
    try:
        a = datetime.datetime.fromisoformat(str(earlier["time"]).replace("Z", "+00:00"))
        b = datetime.datetime.fromisoformat(str(later["time"]).replace("Z", "+00:00"))
    except (KeyError, ValueError):
        return None
    return (b - a).total_seconds()


def summary(journal_text: str) -> list[str]:
    """Lines saying what the agent did: each add with its trigger and time, the retries,
    failures and stops. One line when it never had to act."""
    found, other = events(journal_text)
    if not found:
        return ["grow agent: no events in its journal" + (f" ({other} other line(s))" if other else "")]
    lines: list[str] = []
    trigger: dict[str, Any] | None = None
    retries: Counter[tuple[str, str]] = Counter()
    for event in found:
        kind = event["event"]
        if kind == "trigger":
            trigger = event
        elif kind == "retry":
            retries[(operation_name(str(event.get("operation", "?"))), str(event.get("error", "?")))] += 1
        elif kind == "grown":
            why = ""
            if trigger is not None:
                ttf = trigger.get("time_to_full_s")
                why = (f", triggered by {trigger.get('reason')} ({trigger.get('free_gib')} GiB free, filling at "
                       f"{trigger.get('rate_mib_s')} MiB/s" + (f": {ttf} s to full" if ttf is not None else "") + ")")
            lines.append(f"grow agent: +{event.get('size_gib')} GiB ({event.get('volume_id')}) usable {event.get('seconds')} s "
                         f"after the add began{why}")
            trigger = None
        elif kind == "add-failed":
            lines.append(f"grow agent: an add failed ({event.get('error')}); next try in {event.get('next_try_s')} s")
        elif kind == "at-max":
            lines.append(f"grow agent: stopped adding at storage.grow.max_gib ({event.get('max_gib')} GiB)")
        elif kind == "attachment-limit":
            lines.append(f"grow agent: stopped adding at the instance type's attachment limit ({event.get('limit')})")
        elif kind in ("adopted", "volume-reused"):
            lines.append(f"grow agent: {kind} {event.get('volume_id')}")
        elif kind in ("error", "adopt-failed"):
            lines.append(f"grow agent: {kind}: {event.get('error')}")
    if trigger is not None:
        started = next((e for e in found if e["event"] == "start"), None)
        after = _seconds_between(started, trigger) if started else None
        lines.append(f"grow agent: triggered by {trigger.get('reason')} ({trigger.get('free_gib')} GiB free, filling at "
                     f"{trigger.get('rate_mib_s')} MiB/s" + (f", {after:.1f} s after it started" if after is not None else "")
                     + "), and the add had not finished when the command ended")
    if retries:
        lines.append("grow agent: retried " + ", ".join(f"{op} {n}x ({error})" for (op, error), n in sorted(retries.items())))
    if not lines:
        lines.append("grow agent: watched the disk; it never came near full, so nothing was added")
    return lines
