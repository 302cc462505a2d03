"""The benchmarks' figures: lateness from the sender, the load generator's schedule and parser."""

from __future__ import annotations

import math
from typing import Any

import pytest

from benchmarks.loadgen import Conn, schedule_offsets
from benchmarks.outcomes import (
    OVERLOAD_LAG_MS,
    behind_schedule,
    block_groups,
    capacity_verdict,
    deadline_outcome,
    timeline,
)

NAN = math.nan


def _result(calls: list[tuple[float, float, int, float, int]]) -> dict[str, Any]:
    """A load-generator result from (sent, acked, status, decided, decisions) per call."""
    return {
        "window": (0.0, 10.0),
        "sent": [c[0] for c in calls],
        "acked": [c[1] for c in calls],
        "status": [c[2] for c in calls],
        "decided": [c[3] for c in calls],
        "decisions": [c[4] for c in calls],
    }


CALLS = [
    (0.0, 0.01, 202, 12.0, 1),  # in time
    (1.0, 1.01, 202, 16.5, 1),  # late: 15.5 s after it was sent
    (2.0, 2.01, 202, NAN, 0),  # accepted, never decided: lost
    (3.0, 3.05, 503, NAN, 0),  # refused quickly
    (4.0, 4.50, 503, NAN, 0),  # refused, but slowly
    (5.0, 5.01, 202, 6.0, 2),  # decided twice (in time)
    (NAN, NAN, -1, NAN, 0),  # never sent: not a call
    (6.0, NAN, 0, 7.0, 1),  # no reply, decided in time
]


def test_late_counts_from_the_send_stamp() -> None:
    """A call is late when decided over the platform timeout after it was sent, or lost."""
    out = deadline_outcome(_result(CALLS), platform_timeout=15.0)
    assert out["calls"] == 7
    assert (out["accepted"], out["refused"], out["other_status"], out["no_reply"]) == (4, 2, 1, 1)
    assert (out["in_time"], out["late"], out["never_decided"], out["lost"]) == (3, 1, 3, 1)
    assert out["missed"] == 2
    assert (out["twice"], out["exactly_once"]) == (1, 3)
    assert out["refused_slowly"] == 1
    assert out["neither"] == 3  # the late one, the lost one, the slow refusal
    assert out["ack_ms"]["n"] == 4
    assert out["refusal_ms"]["max"] == pytest.approx(500.0)


def test_outcome_of_some_calls_only() -> None:
    """Restricted to some indexes, only those calls count."""
    out = deadline_outcome(_result(CALLS), platform_timeout=15.0, indexes=[0, 1, 6])
    assert (out["calls"], out["in_time"], out["late"]) == (2, 1, 1)


def test_blocked_groups_split_by_send_time() -> None:
    """Calls sent before, during and after the block go to their own group."""
    groups = block_groups(_result(CALLS), block_start=1.5, block_end=4.5, platform_timeout=15.0)
    assert [groups[g]["calls"] for g in ("before", "during", "after")] == [2, 3, 2]
    assert groups["after"]["decided_while_blocked"] == 0
    assert groups["before"]["late"] == 1


def test_timeline_counts_per_step() -> None:
    """The timeline counts sends, replies and decisions per second, and late calls per step."""
    rows = timeline(_result(CALLS), platform_timeout=15.0, step=3.0)
    first = rows[0]
    assert first["sent"] == pytest.approx(3 / 3.0)  # sent at 0, 1, 2
    assert first["missed"] == 2  # the late one and the lost one


def _summary(**changes: Any) -> dict[str, Any]:
    outcome = {"calls": 10, "accepted": 10, "missed": 0, "ack_ms": {"p99": 5.0}}
    generator: dict[str, Any] = {"not_sent": 0, "send_lag_ms": {"p99": 2.0}}
    for key, value in changes.items():
        (generator if key in generator else outcome)[key] = value
    return {"outcome": outcome, "generator": generator}


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({}, ""),
        ({"send_lag_ms": {"p99": 12.0}}, "calls not sent on schedule"),
        ({"not_sent": 1}, "calls not sent on schedule"),
        ({"accepted": 9}, "1 calls without a 2xx reply"),
        ({"ack_ms": {"p99": 50.0}}, "2xx p99 50.0 ms"),
        ({"missed": 1}, "1 calls late or undecided"),
        (
            {"missed": 2, "not_sent": 3},
            "2 calls late or undecided; calls not sent on schedule",
        ),
    ],
)
def test_capacity_step_verdict(changes: dict[str, Any], reason: str) -> None:
    """A capacity step passes only with the load offered, all 2xx, p99 < 50 ms, none late."""
    assert capacity_verdict(_summary(**changes)) == (not reason, reason)


def test_schedule_spaces_calls_evenly_with_pauses() -> None:
    """Segments place rate x seconds calls evenly; a zero rate is a pause."""
    offsets, length = schedule_offsets([[4.0, 1.0], [0.0, 0.5], [2.0, 1.0]])
    assert length == 2.5
    assert offsets == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.5, 2.0])


class _Gen:
    """What a connection reports to: replies by call index."""

    def __init__(self) -> None:
        self.replies: list[tuple[int, int]] = []
        self.pool = None

    def record_reply(self, index: int, status: int, at: float) -> None:
        self.replies.append((index, status))

    def pool_reply(self, conn: Conn, closed: bool) -> None:
        self.replies.append((-100, int(closed)))


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def test_connection_parses_replies_split_anywhere() -> None:
    """Replies are matched to the call in flight whatever the read boundaries."""
    gen = _Gen()
    conn = Conn(gen)  # type: ignore[arg-type]
    conn.connection_made(_Transport())  # type: ignore[arg-type]
    replies = (
        b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        b'HTTP/1.1 503 Service Unavailable\r\nContent-Length: 11\r\n\r\n{"error":1}',
        b"HTTP/1.1 202 Accepted\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
    )
    for index, reply in enumerate(replies):
        conn.send(index, b"request")
        for i in range(0, len(reply), 7):
            conn.data_received(reply[i : i + 7])
    assert [r for r in gen.replies if r[0] >= 0] == [(0, 202), (1, 503), (2, 202)]
    conn.send(3, b"request")
    conn.data_received(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    assert gen.replies[-2:] == [(3, 202), (-100, 1)]
    assert not conn.alive


def test_a_generator_is_behind_when_it_lags_or_drops_calls() -> None:
    """Behind schedule: calls not sent, or the send or loop lag p99 over the limit."""
    on_time = {"not_sent": 0, "send_lag_ms": {"p99": 40.0}, "loop_lag_ms": {"p99": 5.0}}
    assert not behind_schedule(on_time, OVERLOAD_LAG_MS)
    assert behind_schedule(on_time, 10.0)
    assert behind_schedule({**on_time, "not_sent": 1}, OVERLOAD_LAG_MS)
    assert behind_schedule({**on_time, "loop_lag_ms": {"p99": 200.0}}, OVERLOAD_LAG_MS)
