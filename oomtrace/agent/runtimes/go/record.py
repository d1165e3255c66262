"""The record's `go` part: what discovery read of the binary and its
environment, and what the GC probe saw of the runtime, copied in at the kill
with where each setting in effect came from."""

from __future__ import annotations

from oomtrace.agent.kernel.decode import GO_RING, GoState
from oomtrace.agent.runtimes.go import settings
from oomtrace.agent.runtimes.go.buildinfo import GoProcess
from oomtrace.agent.runtimes.processes import ProcessInfo
from oomtrace.v1 import event_pb2


def fill_go(
    ev: event_pb2.OomEvent, process: ProcessInfo | None, state: GoState | None, kill_ns: int
) -> None:
    """Nothing for a process that is not Go (no build info, no probe state)."""
    if process is not None and process.go is not None:
        _fill_go(ev, process.go)
    if state is not None:
        _fill_go_state(ev, state, kill_ns, process)


_SOURCES = {
    settings.Source.ENV: event_pb2.GoRuntime.ENV,
    settings.Source.PROGRAM: event_pb2.GoRuntime.PROGRAM,
    settings.Source.DEFAULT: event_pb2.GoRuntime.DEFAULT,
}


def _fill_go_state(
    ev: event_pb2.OomEvent, st: GoState, kill_ns: int, process: ProcessInfo | None
) -> None:
    g = ev.go
    g.state = event_pb2.GoRuntime.CONTROLLER if st.controller else event_pb2.GoRuntime.GC
    g.gc_count = st.gc_count
    start_ns = process.start_boot_ns if process is not None else None
    if start_ns is not None and kill_ns > start_ns:
        g.lifetime_ns = kill_ns - start_ns
    count, span_ns, before_kill = settings.count_recent_gcs(
        st.gc_count, st.gc_times_ns, GO_RING, kill_ns, start_ns, st.last_gc_ns
    )
    g.recent_gc_count, g.recent_gc_span_ns = count, span_ns
    g.recent_gc_end_ns_before_kill = before_kill
    g.gc_per_second_10s = count / max(span_ns / 1e9, 1e-3)
    if st.last_gc_ns:
        g.since_last_gc_ns = max(0, kill_ns - st.last_gc_ns)
    if st.controller:
        g.effective_gogc = st.gc_percent
        if 0 < st.memory_limit_bytes < settings.NO_MEMORY_LIMIT:
            g.effective_memory_limit_bytes = st.memory_limit_bytes
        g.heap_live_bytes = st.heap_live_bytes
        g.heap_marked_bytes = st.heap_marked_bytes
        g.heap_goal_bytes = st.heap_goal_bytes
        if st.gomaxprocs > 0:
            g.effective_gomaxprocs = st.gomaxprocs
        go = process.go if process is not None else None
        env = go.env if go is not None else {}
        g.gogc_source = _SOURCES[settings.gogc_source(env, st.gc_percent)]
        g.memory_limit_source = _SOURCES[settings.memory_limit_source(env, st.memory_limit_bytes)]
        if go is not None and st.gomaxprocs > 0:
            g.gomaxprocs_source = _SOURCES[settings.gomaxprocs_source(go, st.gomaxprocs)]


def _fill_go(ev: event_pb2.OomEvent, go: GoProcess) -> None:
    g = ev.go
    g.version = go.build.version
    g.module = go.build.module
    g.build_settings.update(go.build.settings)
    g.gogc = go.env.get("GOGC", "")
    g.gomemlimit = go.env.get("GOMEMLIMIT", "")
    g.gomaxprocs = go.env.get("GOMAXPROCS", "")
    g.godebug = go.env.get("GODEBUG", "")
