"""The rehearsal's account of the grow agent, read from journal lines the agent's own
`emit_json` writes (so a change to the agent's event format breaks these tests)."""

from __future__ import annotations

import io
from contextlib import redirect_stdout

from factory.local.instance.agent_journal import summary
from factory_grow.agent import emit_json


def journal(*events: tuple[str, dict]) -> str:
    buf = io.StringIO()
    with redirect_stdout(buf):
        for name, fields in events:
            emit_json(name, instance="i-1", task="t", **fields)
    return buf.getvalue()


def test_an_add_is_told_with_its_trigger_its_time_and_the_retries_it_took():
    text = journal(
        ("start", {"mountpoint": "/var/lib/docker", "max_gib": 40, "pool": "btrfs"}),
        ("trigger", {"reason": "floor", "free_gib": 0.7, "rate_mib_s": 310.5, "time_to_full_s": 2.3, "add_seconds": 30.0}),
        ("add", {"reason": "floor", "size_gib": 37, "volume_type": "gp3"}),
        ("retry", {"operation": "create_volume", "error": "RequestLimitExceeded", "attempt": 1, "wait_s": 0.6}),
        ("retry", {"operation": "create_volume", "error": "RequestLimitExceeded", "attempt": 2, "wait_s": 1.4}),
        ("retry", {"operation": "attach_volume", "error": "EndpointConnectionError", "attempt": 1, "wait_s": 0.7}),
        ("grown", {"volume_id": "vol-1", "device": "/dev/loop9", "size_gib": 37, "seconds": 6.2, "pool_gib": 40,
                   "grown_gib": 37, "volumes_added": 1}),
    )
    lines = summary(text)
    assert lines[0] == ("grow agent: +37 GiB (vol-1) usable 6.2 s after the add began, triggered by floor "
                        "(0.7 GiB free, filling at 310.5 MiB/s: 2.3 s to full)")
    assert lines[1] == ("grow agent: retried ec2:AttachVolume 1x (EndpointConnectionError), "
                        "ec2:CreateVolume 2x (RequestLimitExceeded)")
    assert len(lines) == 2


def test_an_add_still_under_way_when_the_command_ended_is_said_so():
    text = journal(
        ("start", {"mountpoint": "/var/lib/docker", "max_gib": 40, "pool": "btrfs"}),
        ("trigger", {"reason": "time-to-full", "free_gib": 1.9, "rate_mib_s": 400.0, "time_to_full_s": 4.9, "add_seconds": 30.0}),
        ("add-failed", {"error": "InsufficientVolumeCapacity: no capacity", "next_try_s": 2.0}),
    )
    lines = summary(text)
    assert lines[0] == "grow agent: an add failed (InsufficientVolumeCapacity: no capacity); next try in 2.0 s"
    assert lines[1].startswith("grow agent: triggered by time-to-full (1.9 GiB free, filling at 400.0 MiB/s, ")
    assert lines[1].endswith("s after it started), and the add had not finished when the command ended")


def test_a_quiet_agent_and_a_journal_that_is_not_the_agents():
    quiet = journal(("start", {"mountpoint": "/var/lib/docker", "max_gib": 40, "pool": "btrfs"}))
    assert summary(quiet) == ["grow agent: watched the disk; it never came near full, so nothing was added"]
    assert summary("Traceback (most recent call last):\n  boom\n") == ["grow agent: no events in its journal (2 other line(s))"]
    assert summary("") == ["grow agent: no events in its journal"]


def test_the_stops_are_named_after_what_the_user_can_change():
    text = journal(("at-max", {"pool_gib": 40, "max_gib": 40, "free_gib": 0.5}),
                   ("attachment-limit", {"attached": 27, "limit": 27}))
    assert summary(text) == ["grow agent: stopped adding at storage.grow.max_gib (40 GiB)",
                             "grow agent: stopped adding at the instance type's attachment limit (27)"]
