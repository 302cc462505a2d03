"""The operation registry and the tone buffer on their own (no network)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from callflow.control.digits import ToneBuffer
from callflow.control.registry import OperationRegistry
from callflow.engine.dedupe import event_key
from callflow.errors import CallEndedError
from callflow.events import (
    CallStateChanged,
    CallTerminated,
    OperationFinished,
    ResultInfo,
    ToneReceived,
)
from callflow.testing import ManualClock

CALL = "57dab8b1-894c-409a-b240-bd8beae78896"
SHOUTED = "57DAB8B1894C409AB240BD8BEAE78896"


def test_event_keys_normalise_ids() -> None:
    """Dedupe keys of the same tone or result match however Graph spelled the ids."""
    assert event_key(ToneReceived(CALL, 3, "1")) == event_key(ToneReceived(SHOUTED, 3, "9"))
    first = event_key(OperationFinished(CALL, "AB-CD"))
    assert first == event_key(OperationFinished(SHOUTED, "abcd")) == (SHOUTED.lower(), "op", "abcd")


@given(
    st.lists(st.sampled_from("0123456789*ABCD"), min_size=1, max_size=12).flatmap(
        lambda keys: st.tuples(
            st.just(keys),
            st.permutations([*range(len(keys)), *range(len(keys))]),
        )
    )
)
def test_tones_come_out_in_sequence_order_whatever_the_delivery(
    case: tuple[list[str], list[int]],
) -> None:
    """Keys delivered in any order, each twice, are read once each, in sequenceId order."""
    keys, delivery = case
    buffer = ToneBuffer()
    for index in delivery:
        buffer.add(index + 1, keys[index])
    assert buffer.take(len(keys), ("#",)) == "".join(keys)
    assert len(buffer) == 0
    assert not buffer.add(1, "1")  # consumed: a late redelivery is refused


@given(st.lists(st.sampled_from("0123456789#"), min_size=1, max_size=10), st.data())
def test_take_waits_for_gaps_until_forced(keys: list[str], data: st.DataObject) -> None:
    """A collection never ends across a missing key unless forced; forced, it skips the gap."""
    missing = data.draw(st.integers(min_value=0, max_value=len(keys) - 1))
    buffer = ToneBuffer()
    for index, key in enumerate(keys):
        if index != missing:
            buffer.add(index + 1, key)
    before = keys[:missing]
    stop = "#" in before
    result = buffer.take(len(keys), ("#",))
    if stop:
        assert result == "".join(before[: before.index("#")])
    else:
        assert result is None
        forced = buffer.take(len(keys), ("#",), force=True)
        rest = [k for i, k in enumerate(keys) if i != missing]
        expected = rest[: rest.index("#")] if "#" in rest else rest
        assert forced == "".join(expected)


def test_tone_buffer_is_bounded() -> None:
    """Past its limit the buffer drops the oldest keys and counts them."""
    buffer = ToneBuffer(limit=3)
    for sequence in range(1, 6):
        buffer.add(sequence, str(sequence))
    assert (len(buffer), buffer.overflowed) == (3, 2)
    assert buffer.take(3, (), force=True) == "345"


def test_early_result_is_kept_until_its_waiter_is_bound() -> None:
    """A result without clientContext that arrives first waits for the operation id."""
    registry = OperationRegistry()
    waiter = registry.expect(CALL, "playPrompt", "ctx-1")
    registry.on_events([OperationFinished(SHOUTED, "OP-1", "playPrompt", "completed")])
    assert not waiter.done.is_set()
    registry.bind(waiter, "op1")
    assert waiter.done.is_set() and waiter.finished is not None
    registry.forget(waiter)
    registry.on_events([OperationFinished(CALL, "op-1", "playPrompt", "completed")])
    assert registry.duplicates == 1
    assert registry.waiting == 0


def test_result_matched_by_client_context_before_the_reply() -> None:
    """A result carrying the waiter's clientContext resolves it before Graph's reply."""
    registry = OperationRegistry()
    waiter = registry.expect(CALL, "playPrompt", "ctx-2")
    other = registry.expect("other-call", "playPrompt", "ctx-3")
    registry.on_events([OperationFinished(CALL, "op-2", client_context="ctx-2")])
    registry.on_events([OperationFinished(CALL, "op-3", client_context="ctx-3")])
    assert waiter.done.is_set()
    assert not other.done.is_set()  # same context on another call: not a match


def test_early_results_are_bounded_in_number_and_time() -> None:
    """Unclaimed results are kept at most max_early of them and early_ttl seconds."""
    clock = ManualClock()
    registry = OperationRegistry(max_early=2, early_ttl=5.0, clock=clock)
    for index in range(3):
        registry.on_events([OperationFinished(CALL, f"op-{index}")])
    waiter = registry.expect(CALL, "playPrompt", "ctx")
    registry.bind(waiter, "op-0")
    assert not waiter.done.is_set()  # the oldest was dropped
    clock.advance(10)
    registry.on_events([OperationFinished(CALL, "op-9")])
    registry.bind(registry.expect(CALL, "playPrompt", "ctx-b"), "op-2")
    assert len(registry._early) == 1  # op-1 and op-2 expired, op-9 kept


def test_call_end_fails_waiters_and_later_ones() -> None:
    """A terminated call fails its waiters, and waiters registered later, with its result."""
    registry = OperationRegistry()
    waiter = registry.expect(CALL, "recordResponse", "ctx")
    result = ResultInfo(200, 4097, "peer ended")
    registry.on_events([CallTerminated(SHOUTED, result)])
    assert isinstance(waiter.error, CallEndedError)
    assert waiter.error.result == result
    assert registry.is_ended(CALL)
    late = registry.expect(CALL, "playPrompt", "ctx-2")
    assert isinstance(late.error, CallEndedError)


def test_records_are_bounded_but_busy_ones_are_kept() -> None:
    """Past max_calls the oldest idle calls are forgotten; a call with a waiter stays."""
    registry = OperationRegistry(max_calls=2)
    registry.expect("busy", "playPrompt", "ctx")
    for index in range(4):
        registry.on_events([CallStateChanged(f"idle-{index}", "established")])
    assert "busy" in registry._calls
    assert len(registry._calls) <= 3


def test_stale_states_do_not_move_the_call_back() -> None:
    """An establishing with an older etag after established leaves the call established."""
    registry = OperationRegistry()
    registry.on_events(
        [CallStateChanged(CALL, "established", 5), CallStateChanged(CALL, "establishing", 4)]
    )
    record = registry.record(CALL)
    assert (record.state, record.established) == ("established", True)


def test_operation_metrics() -> None:
    """The metrics hook counts operations by kind and outcome and records their latency."""
    from callflow.metrics import Metrics

    metrics = Metrics()
    metrics.on_operation("playPrompt", "completed", 0.2)
    metrics.on_operation("playPrompt", "timeout", 5.0)
    text = metrics.render().decode()
    assert 'callflow_call_operations_total{kind="playPrompt",outcome="completed"} 1.0' in text
    assert 'callflow_call_operation_seconds_count{kind="playPrompt"} 2.0' in text
