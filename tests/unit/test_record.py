"""A decoded kernel kill, assembled with what the agent knows, to the
OomEvent message and its JSON."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from oomtrace.agent.cgroups.hierarchy import MemoryHierarchy
from oomtrace.agent.cgroups.workloads import Workload
from oomtrace.agent.kernel import decode
from oomtrace.agent.record.assembler import resolve
from oomtrace.agent.record.live import build_event
from oomtrace.agent.record.parts import record_id
from oomtrace.agent.runtimes.processes import ProcessInfo
from oomtrace.records import to_json
from oomtrace.v1 import event_pb2
from tests.unit.fixtures import kernel_lines, load, raw_event

V1 = MemoryHierarchy(1, Path("/sys/fs/cgroup/memory"))


def kills() -> list[decode.KernelKill]:
    return [decode.decode_kill(raw_event(f)) for f in load()["kills"]]


class OneWorkload:
    def __init__(self, w: Workload) -> None:
        self.w = w

    def lookup(self, cgroup_id: int, path: str) -> Workload:
        return self.w


def built(
    kill: decode.KernelKill,
    *,
    boot_id: str = "b-1",
    workload: Workload | None = None,
    process: ProcessInfo | None = None,
    exit_ns: int | None = None,
    reap_ns: int | None = None,
) -> event_pb2.OomEvent:
    a = resolve(
        kill,
        boot_id=boot_id,
        hierarchy=V1,
        process=process,
        workloads=OneWorkload(workload) if workload is not None else None,
        exit_ns=exit_ns,
        reap_ns=reap_ns,
    )
    return build_event(a, node="n1")


def test_json_uses_proto_field_names_and_matches_the_kernel_report() -> None:
    data = load()
    kernel = kernel_lines(data)
    for kill in kills():
        rec = json.loads(to_json(built(kill)))
        k = kernel[kill.victim_tgid]
        v = rec["victim"]
        assert int(v["total_vm_bytes"]) == int(k["total_vm"]) * 1024
        assert int(v["anon_rss_bytes"]) == int(k["anon"]) * 1024
        assert int(v["file_rss_bytes"]) == int(k["file"]) * 1024
        assert int(v["pgtables_bytes"]) == int(k["pgtables"]) * 1024
        assert v["oom_score_adj"] == int(k["adj"])
        assert rec["cgroup"]["path"] == k["task_memcg"]
        assert rec["cgroup"]["oom_memcg_path"] == k["oom_memcg"]
        assert rec["constraint"] == "MEMCG"
        assert rec["constraint_source"] == "DERIVED"
        assert rec["cgroup"]["version"] == 1
        assert int(rec["cgroup"]["memory_limit_bytes"]) == 48 * 1024 * 1024
        assert rec["killed_at"].endswith("Z")
        assert rec["source"] == "LIVE"


def test_id_is_stable_and_distinct_per_kill() -> None:
    a, b = kills()
    assert built(a).id == built(a).id == record_id("b-1", a.boot_ns, a.victim_tgid)
    assert built(a).id != built(b).id
    assert built(a).id != built(a, boot_id="b-2").id


def test_victim_that_was_not_the_trigger_takes_cmdline_from_proc() -> None:
    _own, other = kills()
    info = ProcessInfo(comm="python3", cmdline="/usr/bin/python3 -c hog", exe="/usr/bin/python3.11")
    rec = built(other, process=info)
    assert rec.victim.cmdline == "/usr/bin/python3 -c hog"
    assert rec.victim.exe == "/usr/bin/python3.11"
    assert rec.trigger.pid != rec.victim.pid
    assert list(rec.missing) == []


def test_what_could_not_be_resolved_is_listed_not_dropped() -> None:
    _own, other = kills()
    rec = built(other, process=None)
    assert rec.victim.cmdline == ""
    assert rec.victim.exe == "python3.11"  # the kernel's file name
    assert any(m.startswith("victim.cmdline:") for m in rec.missing)
    assert any(m.startswith("victim.exe:") for m in rec.missing)
    assert rec.victim.anon_rss_bytes > 0  # the rest of the record is intact


def test_timings_are_optional_fields() -> None:
    own, _ = kills()
    plain = json.loads(to_json(built(own)))
    assert "exit_ns" not in plain
    assert "reap_ns" not in plain
    timed = json.loads(to_json(built(own, exit_ns=1500, reap_ns=0)))
    assert (timed["exit_ns"], timed["reap_ns"]) == ("1500", "0")


def test_constraint_from_the_kernel_wins_over_derivation() -> None:
    fields = {
        **load()["kills"][0],
        "flags": decode.F_OOM_CONTROL | decode.F_CMDLINE,
        "oc_constraint": 0,
        "oc_memcg_id": 0,
    }
    rec = built(decode.decode_kill(raw_event(fields)))
    assert rec.constraint == rec.GLOBAL
    assert rec.constraint_source == rec.KERNEL
    assert rec.cgroup.oom_memcg_path == ""


def test_workload_fills_container_and_pod() -> None:
    from oomtrace.agent.cgroups.container_runtimes import ContainerInfo
    from oomtrace.agent.cgroups.names import CgroupIdentity
    from oomtrace.agent.cgroups.workloads import Workload

    own, _ = kills()
    ident = CgroupIdentity("", "c" * 64, "uid-1", "Burstable")
    info = ContainerInfo(
        "containerd",
        "c" * 64,
        "cart",
        "cart:1",
        64 << 20,
        {"io.kubernetes.pod.name": "p"},
        "p",
        "shop",
        "uid-1",
    )
    rec = built(own, workload=Workload("/k/x", ident, info))
    assert (rec.container.runtime, rec.container.name, rec.container.image) == (
        "containerd",
        "cart",
        "cart:1",
    )
    assert (rec.pod.name, rec.pod.namespace, rec.pod.uid, rec.pod.qos_class) == (
        "p",
        "shop",
        "uid-1",
        "Burstable",
    )
    assert dict(rec.container.labels) == {"io.kubernetes.pod.name": "p"}
    assert not [m for m in rec.missing if m.startswith(("container", "pod"))]


def test_unresolved_container_keeps_what_the_path_said_and_why() -> None:
    from oomtrace.agent.cgroups.names import CgroupIdentity
    from oomtrace.agent.cgroups.workloads import Workload

    own, _ = kills()
    ident = CgroupIdentity("docker", "d" * 64, "uid-2", "BestEffort")
    rec = built(own, workload=Workload("/k/y", ident, None, ("no runtime state",)))
    assert (rec.container.runtime, rec.container.id, rec.pod.uid) == ("docker", "d" * 64, "uid-2")
    assert "container: no runtime state" in rec.missing
    assert any(m.startswith("pod.name:") for m in rec.missing)
    assert rec.incident_id == rec.id


def test_timeline_joins_the_go_runtime_by_sample_time() -> None:
    from oomtrace.agent.pressure.sampler import Point
    from oomtrace.agent.record.assembler import Timeline
    from oomtrace.agent.record.live import timeline
    from oomtrace.agent.runtimes.go.sampling import GoPoint

    s = 1_000_000_000
    cg = tuple(Point(t * s, t << 20, 64 << 20, 0, 0, 0.0, 0.0) for t in (1, 2, 3))
    go = (GoPoint(2 * s, 10, 30 << 20), GoPoint(3 * s, 16, 40 << 20))
    tl = timeline(Timeline("/a", cg, go), kill_boot_ns=3 * s)
    assert [p.offset_ms for p in tl] == [-2000, -1000, 0]
    assert [p.go_heap_live_bytes for p in tl] == [0, 30 << 20, 40 << 20]
    assert [p.go_gc_per_second for p in tl] == [0.0, 0.0, 6.0]


def go_state(times: list[int], **kw: int) -> decode.GoState:
    fields = {
        "gc_count": len(times),
        "last_gc_ns": times[-1],
        "gc_times_ns": tuple(times),
        "controller": True,
        "gc_percent": 100,
        "memory_limit_bytes": (1 << 63) - 1,
        "heap_live_bytes": 30 << 20,
        "heap_marked_bytes": 20 << 20,
        "heap_goal_bytes": 40 << 20,
        "gomaxprocs": 4,
    }
    fields.update(kw)
    return decode.GoState(**fields)  # type: ignore[arg-type]


def test_go_gc_rate_counts_the_last_ten_seconds() -> None:
    own, _ = kills()
    times = [own.boot_ns - s * 10**9 for s in (25, 9, 6, 3, 1)]  # 4 within 10 s
    ev = built(dataclasses.replace(own, go=go_state(times)))
    assert abs(ev.go.gc_per_second_10s - 0.4) < 1e-6  # a float field
    assert ev.go.since_last_gc_ns == 10**9
    assert not ev.go.HasField("effective_memory_limit_bytes")  # MaxInt64: no limit
    assert ev.go.effective_gomaxprocs == 4


def test_go_gc_rate_when_the_ring_holds_less_than_ten_seconds() -> None:
    """At 100 GCs a second the 32-entry ring spans 0.32 s: the rate is taken
    over that span, not as 32 GCs in 10 s."""
    own, _ = kills()
    times = [own.boot_ns - (32 - i) * 10**7 for i in range(decode.GO_RING)]
    ev = built(dataclasses.replace(own, go=go_state(times)))
    assert abs(ev.go.gc_per_second_10s - 100) < 1


def test_the_kernels_line_gives_the_victims_figures_where_the_record_has_it() -> None:
    """Before 6.2 a dying victim's counters can move between the BPF snapshot
    and the kernel's "Killed process" line: with the report, the record says
    what the kernel printed, and says so; without it, the snapshot."""
    from oomtrace.agent.kernel_log.reports import ParsedReport

    kill = kills()[0]
    snap = built(kill)
    assert snap.victim.figures_from == event_pb2.Process.BPF_SNAPSHOT
    line = {"total_vm": 9000, "anon": 4100, "file": 1200, "shmem": 0, "pgtables": 96}
    report = ParsedReport(first_seq=1, victim_pid=kill.victim_tgid, killed={**line, "uid": 0})
    a = resolve(kill, boot_id="b-1", hierarchy=V1, process=None, workloads=None, report=report)
    ev = build_event(a, node="n1")
    v = ev.victim
    assert v.figures_from == event_pb2.Process.KERNEL_LINE
    assert (v.total_vm_bytes, v.anon_rss_bytes, v.file_rss_bytes, v.pgtables_bytes) == (
        9000 * 1024,
        4100 * 1024,
        1200 * 1024,
        96 * 1024,
    )
    assert v.swap_bytes == snap.victim.swap_bytes  # the line has no swap: the snapshot's
    other = ParsedReport(first_seq=1, victim_pid=kill.victim_tgid + 1, killed=line)
    a = resolve(kill, boot_id="b-1", hierarchy=V1, process=None, workloads=None, report=other)
    assert build_event(a, node="n1").victim.figures_from == event_pb2.Process.BPF_SNAPSHOT


def test_a_userspace_killers_kill_names_the_killer_and_no_kernel_limit() -> None:
    kill = dataclasses.replace(kills()[0], user_signal=15, trigger_comm="earlyoom")
    ev = built(kill)
    assert ev.source == event_pb2.OomEvent.USERSPACE
    assert (ev.killer.pid, ev.killer.comm, ev.killer.signal) == (
        kill.trigger_tgid,
        "earlyoom",
        "SIGTERM",
    )
    assert ev.constraint == event_pb2.OomEvent.UNKNOWN
    (v,) = [v for v in ev.verdicts if v.code == "USERSPACE_OOM_KILL"]
    assert v.explanation.startswith(
        f"earlyoom[{kill.trigger_tgid}], a userspace OOM killer, sent SIGTERM"
    )
