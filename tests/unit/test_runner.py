"""The event loop's bookkeeping: held kills, exits, reaping, losses, order."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from oomtrace.agent.cgroups.hierarchy import MemoryHierarchy
from oomtrace.agent.kernel import decode
from oomtrace.agent.kernel.oom_caller import KernelText, TextRange
from oomtrace.agent.loop import Runner
from oomtrace.agent.runtimes.processes import ProcessCache
from oomtrace.v1 import event_pb2
from tests.unit.clock import ManualClock
from tests.unit.fixtures import load, raw_event


class ListSink:
    def __init__(self) -> None:
        self.events: list[event_pb2.OomEvent] = []

    def emit(self, event: event_pb2.OomEvent) -> None:
        self.events.append(event)


class FakeSource:
    def __init__(self) -> None:
        self.lost = {"kills": 0, "notes": 0, "scratch": 0}

    def open_buffers(
        self,
        on_kill: Callable[[Any], None],
        on_note: Callable[[Any], None],
        on_cgroup: Callable[[Any], None] | None = None,
        on_profile: Callable[[bytes], None] | None = None,
    ) -> None:
        pass

    def poll(self, timeout_ms: int) -> None:
        pass

    def kernel_lost(self) -> dict[str, int]:
        return dict(self.lost)

    @property
    def user_lost(self) -> dict[str, int]:
        return {"kills": 0, "notes": 0}


def make_runner(
    tmp_path: Path, hold_ns: int = 1_000_000_000
) -> tuple[Runner, ListSink, FakeSource]:
    sink, source = ListSink(), FakeSource()
    runner = Runner(
        source,
        [sink],
        hierarchy=MemoryHierarchy(1, None),
        hooks=("raw_tracepoint/mark_victim",),
        hold_ns=hold_ns,
        processes=ProcessCache(proc=tmp_path),  # an empty /proc: nothing is alive
        status_file=tmp_path / "status.json",
        node="n1",
        # Well after every fixture kill, whatever this machine's uptime.
        clock=ManualClock(max(k["boot_ns"] for k in load()["kills"]) + 3600 * 10**9),
    )
    return runner, sink, source


def note(kind: int, boot_ns: int, tgid: int, tid: int, what: int = 0) -> SimpleNamespace:
    return SimpleNamespace(kind=kind, what=what, boot_ns=boot_ns, tgid=tgid, tid=tid)


def test_kill_is_held_until_its_victim_exits(tmp_path: Path) -> None:
    runner, sink, _ = make_runner(tmp_path)
    fields = load()["kills"][0]
    runner.on_kill(raw_event(fields))
    runner.flush(now_ns=fields["boot_ns"] + 1000)
    assert sink.events == []
    runner.on_note(
        note(
            decode.Kind.EXIT,
            fields["boot_ns"] + 2_000_000,
            fields["victim_tgid"],
            fields["victim_tgid"],
        )
    )
    runner.flush(now_ns=fields["boot_ns"] + 3_000_000)
    (ev,) = sink.events
    assert ev.exit_ns == 2_000_000
    assert not ev.HasField("reap_ns")
    assert runner.counters.records_emitted == 1


def test_victim_that_never_exits_is_recorded_after_the_hold(tmp_path: Path) -> None:
    runner, sink, _ = make_runner(tmp_path, hold_ns=500)
    fields = load()["kills"][0]
    runner.on_kill(raw_event(fields))
    runner.flush(now_ns=fields["boot_ns"] + 499)
    assert sink.events == []
    runner.flush(now_ns=fields["boot_ns"] + 500)
    (ev,) = sink.events
    assert not ev.HasField("exit_ns")
    assert any("had not exited" in m for m in ev.missing)
    assert runner.counters.held_too_long == 1


def test_reaper_finish_sets_reap_time_by_thread_id(tmp_path: Path) -> None:
    runner, sink, _ = make_runner(tmp_path)
    fields = load()["kills"][0]
    runner.on_kill(raw_event(fields))
    runner.on_note(
        note(decode.Kind.REAP, fields["boot_ns"] + 7000, 0, fields["victim_tid"], what=2)
    )
    runner.flush(now_ns=fields["boot_ns"] + 8000)
    (ev,) = sink.events
    assert ev.reap_ns == 7000


def test_records_leave_in_kill_order(tmp_path: Path) -> None:
    runner, sink, _ = make_runner(tmp_path, hold_ns=10_000_000_000)
    first, second = load()["kills"]
    runner.on_kill(raw_event(first))
    runner.on_kill(raw_event(second))
    # The second victim exits first; its record waits for the first one's.
    runner.on_note(
        note(decode.Kind.EXIT, second["boot_ns"] + 10, second["victim_tgid"], second["victim_tgid"])
    )
    runner.flush(now_ns=second["boot_ns"] + 20)
    assert sink.events == []
    runner.on_note(
        note(decode.Kind.EXIT, second["boot_ns"] + 30, first["victim_tgid"], first["victim_tgid"])
    )
    runner.flush(now_ns=second["boot_ns"] + 40)
    assert [e.victim.pid for e in sink.events] == [first["victim_tgid"], second["victim_tgid"]]


def test_undecodable_events_are_counted_and_nothing_else_is_lost(tmp_path: Path) -> None:
    runner, sink, _ = make_runner(tmp_path, hold_ns=0)
    runner.on_kill(raw_event({**load()["kills"][0], "memcg_depth": 99}))
    runner.on_note(note(9, 0, 1, 1))
    runner.on_kill(raw_event(load()["kills"][1]))
    runner.flush()
    assert runner.counters.decode_errors == 2
    assert len(sink.events) == 1


def test_kernel_losses_are_counted_and_written_to_the_status_file(tmp_path: Path) -> None:
    import json

    runner, _, source = make_runner(tmp_path)
    source.lost["kills"] = 3
    runner.check_losses()
    runner.write_status()
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["counters"]["kernel_lost"]["kills"] == 3


def test_victims_of_one_oom_killer_call_share_an_incident(tmp_path: Path) -> None:
    runner, sink, _ = make_runner(tmp_path, hold_ns=0)
    first = load()["kills"][0]
    # A second victim marked by the same trigger thread, for the same memcg, µs later.
    second = {
        **load()["kills"][1],
        "trigger_tid": first["trigger_tid"],
        "boot_ns": first["boot_ns"] + 5000,
    }
    # A later, separate kill by another trigger.
    third = {**load()["kills"][1], "victim_tgid": 999, "boot_ns": first["boot_ns"] + 2_000_000_000}
    for raw in (first, second, third):
        runner.on_kill(raw_event(raw))
    runner.flush(now_ns=third["boot_ns"] + 1)
    a, b, c = sink.events
    assert a.incident_id == b.incident_id == a.id
    assert c.incident_id == c.id != a.id


def test_kernel_stack_is_checked_against_oom_control(tmp_path: Path) -> None:
    runner, _, _ = make_runner(tmp_path)
    runner.kernel_text = KernelText(
        (TextRange("out_of_memory", 0x1000, 0x1500), TextRange("try_charge_memcg", 0x2000, 0x2800))
    )
    memcg_stack = [0x1200, 0x2400] + [0] * (decode.KSTACK_DEPTH - 2)
    global_stack = [0x1200, 0x9000] + [0] * (decode.KSTACK_DEPTH - 2)
    base = {**load()["kills"][0], "flags": decode.F_OOM_CONTROL, "oc_constraint": 3}
    for stack in (memcg_stack, global_stack):
        runner.on_kill(raw_event({**base, "kstack_len": 2, "kstack": stack}))
    # No stack: nothing to check.
    runner.on_kill(raw_event(base))
    assert (runner.counters.oom_path_checks, runner.counters.oom_path_mismatches) == (2, 1)


def test_health_says_when_the_event_loop_stops_going_round(tmp_path: Path) -> None:
    """What the DaemonSet's liveness probe reads on /healthz."""
    runner, _sink, _source = make_runner(tmp_path)
    assert isinstance(runner.clock, ManualClock)
    ok, why = runner.health()
    assert ok, why
    runner.clock.advance(31 * 10**9)  # the loop did not go round for 31 s
    ok, why = runner.health()
    assert not ok
    assert "31 s" in why
