"""Held calls in the fleet's store: records, adoption, hand-off, and the writer and
reconciliation of a worker's held calls; each test on one redis-server, a three-master
cluster and through Sentinel (``backend``, tests/fleet/conftest.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest

from callflow.decisions import Reject, RejectReason
from callflow.errors import ActionError, CallGoneError
from callflow.events import CallAdopted
from callflow.fleet.adoption import Adoptions
from callflow.fleet.connect import connect
from callflow.fleet.held import HeldCalls, HeldRecord, HeldStore
from callflow.fleet.stats import FleetStats
from callflow.fleet.store import RedisStore
from callflow.fleet.trust import FleetSigner
from callflow.fleet.watch import FleetWatch
from tests.fleet.conftest import Backend

NS = "held-ns"
SECRET = "held-fleet-secret-0123456789abcdef"

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def raw(backend: Backend) -> AsyncIterator[Any]:
    """A plain client of the backend, to look at and tamper with the keys."""
    connection = connect(backend.url, timeout=5.0, client_name="test-raw")
    try:
        yield connection.client
    finally:
        await connection.aclose()


def key(kind: str, name: str = "") -> str:
    return f"callflow:{{{NS}}}:{kind}:{name}" if name else f"callflow:{{{NS}}}:{kind}"


def store(url: str, instance: str, **options: Any) -> RedisStore:
    options.setdefault("timeout", 1.0)  # a loaded test machine, not a worker's bound
    return RedisStore(url, instance_id=instance, namespace=NS, secret=SECRET, **options)


def record(s: RedisStore, call_id: str, memo: str = "{}") -> HeldRecord:
    return HeldRecord(call_id, "tenant-1", s.holder, time.time(), memo)


async def test_a_held_call_is_written_signed_read_back_and_dropped_by_its_owner_only(
    backend: Backend, raw: Any
) -> None:
    async with store(backend.url, "a") as a, store(backend.url, "b") as b:
        ha, hb = HeldStore(a), HeldStore(b)
        assert await ha.put(record(a, "c1", '{"step":"pin"}')) is True
        assert await raw.smembers(key("holds", "a")) == {"c1"}
        fields = await raw.hgetall(key("held", "c1"))
        assert fields["owner"] == a.holder
        opened = FleetSigner(SECRET).opened("held", "c1", fields["v"], limit=32_768)
        assert opened is not None and HeldRecord.decode(opened) == HeldRecord.decode(opened)
        assert await hb.owner_of("c1") == "a"
        assert await ha.owners(["c1", "nothing"]) == [a.holder, ""]
        # another worker cannot write over it: it is told who owns it
        assert await hb.put(record(b, "c1")) == a.holder
        await hb.drop("c1")  # not b's to drop
        assert await raw.exists(key("held", "c1")) == 1
        await ha.drop("c1")
        assert await raw.exists(key("held", "c1")) == 0
        assert await raw.smembers(key("holds", "a")) == set()


async def test_a_forged_record_names_no_owner_and_is_never_adopted(
    backend: Backend, raw: Any
) -> None:
    async with store(backend.url, "a") as a, store(backend.url, "dead") as dead:
        ha = HeldStore(a)
        await raw.hset(key("held", "c9"), mapping={"owner": "dead#x", "v": "forged"})
        await raw.sadd(key("holds", "dead"), "c9")
        assert await ha.owner_of("c9") is None
        await dead.beat(None, 5.0)
        await raw.delete(key("instance", "dead"))
        assert await ha.adopt("dead") is None
        assert a.stats.forged >= 1


async def test_two_survivors_race_for_a_lost_workers_calls_and_each_is_adopted_once(
    backend: Backend, raw: Any
) -> None:
    async with (
        store(backend.url, "a") as a,
        store(backend.url, "b") as b,
        store(backend.url, "dead") as dead,
    ):
        hd = HeldStore(dead)
        for i in range(30):
            assert await hd.put(record(dead, f"c{i}", f'{{"n":{i}}}')) is True
        for s in (a, b, dead):
            await s.beat(None, 5.0)
        ha, hb = HeldStore(a), HeldStore(b)
        assert await ha.adopt("dead") is None  # alive
        await raw.delete(key("instance", "dead"))
        results = await asyncio.gather(ha.adopt("dead"), hb.adopt("dead"))
        adopted = [r for result in results if result is not None for r in result.records]
        assert sorted(r.call_id for r in adopted) == sorted(f"c{i}" for i in range(30))
        assert sum(result is not None for result in results) == 1
        winner = next(result for result in results if result is not None)
        assert winner.reason == "owner_lost" and winner.instance == "dead"
        assert {r.memo for r in adopted} == {f'{{"n":{i}}}' for i in range(30)}
        assert await raw.exists(key("holds", "dead")) == 0
        # the dead worker's take-over now drops it from the fleet's members
        await (a if results[0] else b).take_over("dead")
        assert "dead" not in await raw.smembers(key("instances"))


async def test_take_over_keeps_an_instance_with_held_calls_in_the_fleet(
    backend: Backend, raw: Any
) -> None:
    """Undecided calls are taken over at once, but the lost instance stays a member while it
    holds answered calls, so a survivor that may not adopt yet finds it at a later beat."""
    async with store(backend.url, "a") as a, store(backend.url, "dead") as dead:
        await HeldStore(dead).put(record(dead, "c1"))
        await dead.beat(None, 5.0)
        await raw.delete(key("instance", "dead"))
        await a.take_over("dead")
        assert "dead" in await raw.smembers(key("instances"))
        assert (await HeldStore(a).adopt("dead")) is not None
        await a.take_over("dead")
        assert "dead" not in await raw.smembers(key("instances"))


async def test_a_hand_off_is_adopted_at_once_as_handed_off(backend: Backend, raw: Any) -> None:
    async with store(backend.url, "a") as a, store(backend.url, "leaving") as leaving:
        hl = HeldStore(leaving)
        await hl.put(record(leaving, "c1"))
        await leaving.beat(None, 5.0)
        ha = HeldStore(a)
        assert await ha.adopt("leaving", handed_off_only=True) is None  # alive, not handed off
        assert await hl.hand_off()
        assert await hl.handed()
        adoption = await ha.adopt("leaving", handed_off_only=True)
        assert adoption is not None and adoption.reason == "handed_off"
        assert adoption.handed_at == pytest.approx(time.time(), abs=5)
        assert not await hl.handed()


async def test_a_new_life_adopts_what_its_previous_life_held_but_not_its_own(
    backend: Backend,
) -> None:
    async with store(backend.url, "w") as old:
        await HeldStore(old).put(record(old, "c-old"))
    async with store(backend.url, "w") as new:
        hn = HeldStore(new)
        await hn.put(record(new, "c-new"))
        adoption = await hn.adopt("w", force=True)
        assert adoption is not None
        assert [r.call_id for r in adoption.records] == ["c-old"]
        assert await hn.owners(["c-old", "c-new"]) == [new.holder, new.holder]


async def test_the_writer_writes_behind_waits_for_memos_and_drops_ended_calls(
    backend: Backend, raw: Any
) -> None:
    async with store(backend.url, "a") as a, anyio.create_task_group() as tg:
        held = HeldCalls(HeldStore(a))
        tg.start_soon(held.run)
        held.hold("c1", "t")
        await held.remember("c1", "t", '{"step":"menu"}')  # returns once the store has it
        sealed = await raw.hget(key("held", "c1"), "v")
        text = FleetSigner(SECRET).opened("held", "c1", sealed, limit=32_768)
        assert text is not None
        stored = HeldRecord.decode(text)
        assert stored is not None and stored.memo == '{"step":"menu"}'
        assert stored.tenant_id == "t"
        held.ended("c1")
        await held.drain(5.0)
        assert await raw.exists(key("held", "c1")) == 0
        tg.cancel_scope.cancel()


async def test_reconcile_writes_again_what_redis_lost_and_lets_go_of_adopted_calls(
    backend: Backend, raw: Any
) -> None:
    lost: list[tuple[str, str]] = []
    async with store(backend.url, "a") as a, store(backend.url, "b") as b:
        held = HeldCalls(HeldStore(a), on_lost=lambda call_id, owner: lost.append((call_id, owner)))
        held.hold("c1", "t")
        held.hold("c2", "t")
        assert await held.flush()
        await raw.delete(key("held", "c1"))  # Redis lost it (a restart without persistence)
        await raw.hset(key("held", "c2"), "owner", b.holder)  # b adopted it meanwhile
        await held.reconcile()
        assert lost == [("c2", b.holder)]
        assert "c2" not in held and "c1" in held
        assert await held.flush()
        assert await raw.hget(key("held", "c1"), "owner") == a.holder
        assert await raw.hget(key("held", "c2"), "owner") == b.holder  # not taken back


class Graph:
    """What adoption asks of Graph: calls by state (missing: gone)."""

    def __init__(self, states: dict[str, str]) -> None:
        self.states = states
        self.asked: list[str] = []

    async def get_call(
        self, call_id: str, *, tenant_id: str | None = None, deadline: float | None = None
    ) -> Any:
        self.asked.append(call_id)
        if call_id not in self.states:
            raise CallGoneError(404, "8522", f"call {call_id} is gone")
        state = self.states[call_id]

        class Status:
            pass

        status = Status()
        status.state = state  # type: ignore[attr-defined]
        status.ended = state == "terminated"  # type: ignore[attr-defined]
        return status

    async def decide(self, *args: Any, **kwargs: Any) -> Any:
        return None


async def test_after_an_outage_longer_than_a_heartbeat_live_workers_do_not_adopt_each_other(
    backend: Backend, raw: Any
) -> None:
    """Every heartbeat expired (Redis was away longer than three intervals): the first beats
    after it see every peer dead, but a worker adopts only once its view has settled, by
    which time the live peers beat again. A peer that stays silent is adopted then."""
    taken: list[CallAdopted] = []
    graph = Graph({"c-b": "established", "c-gone": "established"})
    async with (
        store(backend.url, "a") as a,
        store(backend.url, "b") as b,
        store(backend.url, "gone") as gone,
    ):
        for s, call in ((b, "c-b"), (gone, "c-gone")):
            await HeldStore(s).put(record(s, call, '{"at":"x"}'))
            await s.beat(None, 0.3)
        held = HeldCalls(HeldStore(a))
        watch = FleetWatch(
            a,
            graph,
            default=Reject(RejectReason.BUSY),
            interval=0.1,
            held=held,
            adoptions=Adoptions(graph, held, lambda *args: taken.append(args[3]), FleetStats()),
            settle=0.3,
        )
        await raw.delete(key("instance", "b"), key("instance", "gone"))  # all expired
        async with anyio.create_task_group() as tg:
            await tg.start(watch.run)
            # b comes back within its interval; "gone" never does
            with anyio.fail_after(10):
                while True:
                    await b.beat(None, 0.3)
                    if taken:
                        break
                    await anyio.sleep(0.05)
            watch.stop()
        assert [event.call_id for event in taken] == ["c-gone"]
        assert taken[0].previous_owner == "gone" and taken[0].memo == {"at": "x"}
        assert await raw.hget(key("held", "c-b"), "owner") == b.holder


async def test_an_adopted_call_that_ended_meanwhile_is_forgotten_without_an_event(
    backend: Backend, raw: Any
) -> None:
    taken: list[CallAdopted] = []
    graph = Graph({"alive": "established", "over": "terminated"})
    async with store(backend.url, "a") as a, store(backend.url, "dead") as dead:
        hd = HeldStore(dead)
        for call in ("alive", "over", "gone"):
            await hd.put(record(dead, call))
        await hd.hand_off()
        held = HeldCalls(HeldStore(a))
        adoptions = Adoptions(graph, held, lambda *args: taken.append(args[3]), FleetStats())
        adoption = await HeldStore(a).adopt("dead", handed_off_only=True)
        assert adoption is not None
        for r in adoption.records:
            await adoptions.adopt(adoption, r, adoption.handed_at)
        assert [event.call_id for event in taken] == ["alive"]
        assert taken[0].reason == "handed_off" and taken[0].lost_for is not None
        assert sorted(graph.asked) == ["alive", "gone", "over"]
        assert await raw.exists(key("held", "over"), key("held", "gone")) == 0
        assert "alive" in held


async def test_a_memo_is_kept_only_for_a_call_this_worker_holds(backend: Backend) -> None:
    async with store(backend.url, "a") as a:
        held = HeldCalls(HeldStore(a))
        with pytest.raises(ActionError, match="not held by this worker"):
            await held.remember("someone-elses", "t", "{}")
        assert "someone-elses" not in held


async def test_reconcile_checks_a_bounded_batch_per_beat(
    backend: Backend, raw: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many held calls are checked a batch per heartbeat, all of them over a few beats."""
    monkeypatch.setattr("callflow.fleet.held.RECONCILE_BATCH", 10)
    async with store(backend.url, "a") as a:
        held = HeldCalls(HeldStore(a))
        for i in range(25):
            held.hold(f"c{i}", "t")
        assert await held.flush()
        await raw.delete(*(key("held", f"c{i}") for i in range(25)))
        for beat in range(3):
            await held.reconcile()
            assert await held.flush()
            rewritten = await raw.exists(*(key("held", f"c{i}") for i in range(25)))
            assert rewritten == min(25, 10 * (beat + 1))
