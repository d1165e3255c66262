"""`oomtrace agent`: wires preflight, the BPF session, the loop and the sinks."""

from __future__ import annotations

import time
from functools import partial
from pathlib import Path

import structlog

from oomtrace import tls
from oomtrace.agent.cgroups import hierarchy as cgroups
from oomtrace.agent.cgroups.container_runtimes import RuntimeRoots
from oomtrace.agent.cgroups.workloads import WorkloadCache
from oomtrace.agent.delivery.export import Exporter, SpoolSink
from oomtrace.agent.delivery.privacy import Privacy
from oomtrace.agent.delivery.sinks import StdoutSink
from oomtrace.agent.delivery.spool import Spool, SpoolLockedError, lock_directory
from oomtrace.agent.doctor import preflight, require
from oomtrace.agent.errors import AgentError
from oomtrace.agent.footprint import in_child, return_freed_heap
from oomtrace.agent.host import boot_id, boot_ns_now, cluster_name
from oomtrace.agent.kernel.bcc_loader import BpfSession
from oomtrace.agent.kernel.oom_caller import KernelText
from oomtrace.agent.kernel_log.recovery import KernelLog
from oomtrace.agent.loop import Runner, Sink
from oomtrace.agent.metrics import AgentMetrics, Losses
from oomtrace.agent.pressure.sampler import PressureSampler
from oomtrace.agent.runtimes.go.heap import HeapProfiles
from oomtrace.agent.runtimes.go.probes import GoProbes
from oomtrace.agent.runtimes.go.sampling import GoSampler
from oomtrace.agent.runtimes.processes import ProcessCache
from oomtrace.records import HIGH_STALL_S, USERSPACE_KILLERS

log = structlog.get_logger(__name__)


def run_agent(
    *,
    stdout: bool,
    collector: str | None,
    state_dir: Path,
    spool_dir: Path | None,
    backfill: bool = True,
    status_file: Path | None,
    hold_s: float,
    node: str | None,
    cluster: str | None = None,
    profile_before: tuple[int, int] = (80, 60),
    high_stall_s: int = HIGH_STALL_S,
    userspace_killers: tuple[str, ...] = USERSPACE_KILLERS,
    killer_writes: str = "kprobe",
    runtime_roots: RuntimeRoots | None = None,
    metrics_listen: str | None = None,
    privacy: Privacy | None = None,
    client_tls: tls.ClientTls | None = None,
) -> None:
    """Runs until SIGTERM or SIGINT. Raises HostNotSupportedError or
    BpfLoadError, with every reason, when the agent cannot run here."""
    started = time.monotonic()
    if collector:
        # Before anything is loaded: a TLS setting that cannot work is said now.
        try:
            for target in collector.split(","):
                (client_tls or tls.ClientTls()).check(target.strip())
        except tls.TlsError as exc:
            raise AgentError(str(exc)) from None
    # In a child: indexing every kernel type for the layout costs ~60 MiB that
    # Python would keep for the agent's whole life.
    checks, layout = in_child(partial(preflight, mount_tracefs=True))
    require(checks)
    assert layout is not None  # require() fails without BTF
    # One agent per state directory: two would share the kernel-log
    # checkpoint and the spool, and delete each other's records.
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        lock_directory(state_dir, "the state directory")
        spool = Spool(spool_dir or state_dir / "spool") if collector else None
    except SpoolLockedError as exc:
        raise AgentError(exc.strerror or str(exc)) from None
    hierarchy = cgroups.memory_hierarchy()
    kernel_log = KernelLog(
        state_dir / "kmsg-checkpoint.json",
        boot_id(),
        backfill=backfill,
        cgroup_kills=lambda: cgroups.local_oom_kills(hierarchy),
    )
    kernel_log.start()
    kernel_log.note_kill_count()
    session = BpfSession(
        layout,
        memcg_hierarchy_id=hierarchy.hierarchy_id,
        profile_before_percent=profile_before[0],
        profile_before_window_s=profile_before[1],
        userspace_killers=userspace_killers,
        killer_writes=killer_writes,
    )
    return_freed_heap()  # what the compile left behind
    kernel_log.mark_attached()
    sampler: PressureSampler | None = None
    go_probes = GoProbes(session)
    try:
        processes = ProcessCache()
        scanned = processes.scan()
        for pid, info in processes.items():
            if info.go is not None:
                go_probes.ensure(pid, info.go)
            if info.outputs is not None:
                session.watch_runtime(pid)
        # Each binary's parse is bounded (go/worker.py); at start-up they are
        # waited for, so processes running at start are probed before ready.
        go_probes.poll(wait_s=60)
        workloads = WorkloadCache(hierarchy.mount, runtime_roots or RuntimeRoots())
        containers = workloads.scan()
        sampler = PressureSampler(
            hierarchy,
            session.reclaim_stats,
            go=GoSampler(session.go_states),
            high_stall_s=high_stall_s,
        )
        sampler.scan()
        # Its own thread: a busy event loop must not leave holes in timelines.
        sampler.start()
        sinks: list[Sink] = []
        exporter = None
        if spool is not None and collector:
            # The spool comes first: a record is on disk before anything else.
            sinks.append(SpoolSink(spool))
            exporter = Exporter(spool, collector, client_tls=client_tls)
            exporter.start()
        if stdout:
            sinks.append(StdoutSink())
        attached = tuple(h.name for h in session.hooks if h.attached)
        kernel_text = KernelText.load()
        metrics = AgentMetrics() if metrics_listen else None
        runner = Runner(
            session,
            sinks,
            hierarchy=hierarchy,
            hooks=attached,
            hold_ns=int(hold_s * 1e9),
            processes=processes,
            status_file=status_file,
            node=node,
            cluster=cluster_name() if cluster is None else cluster,
            workloads=workloads,
            kernel_log=kernel_log,
            sampler=sampler,
            go_probes=go_probes,
            watch_runtime=session.watch_runtime,
            heap_profiles=HeapProfiles(
                go_probes, now_ns=boot_ns_now, hooked=session.profiles_hooked
            ),
            kernel_text=kernel_text,
            observer=metrics,
            privacy=privacy,
        )
        if metrics is not None and metrics_listen:
            serve_metrics(metrics, metrics_listen, runner, session, spool, kernel_log)
        log.info(
            "agent.ready",
            hooks=list(attached),
            skipped=[h.name for h in session.hooks if not h.attached],
            ring_buffer=layout.has_ringbuf,
            cgroup_version=runner.hierarchy.version,
            processes_cached=scanned,
            containers_known=containers,
            oom_path_from_stack=kernel_text.reason or "yes",
            kernel_log=kernel_log.unreadable or "yes",
            start_s=round(time.monotonic() - started, 3),
        )
        runner.run()
        if exporter is not None:
            exporter.stop()
        log.info("agent.stopped", **runner.counters.as_dict())
    finally:
        if sampler is not None:
            sampler.close()
        go_probes.close()
        session.close()
        kernel_log.stop()


def serve_metrics(
    metrics: AgentMetrics,
    address: str,
    runner: Runner,
    session: BpfSession,
    spool: Spool | None,
    kernel_log: KernelLog,
) -> None:
    """/metrics on address, reading the agent's own counters at each scrape."""
    metrics.watch(
        losses=lambda: Losses(
            kernel=session.kernel_lost(),
            buffer=dict(session.user_lost),
            decode=runner.counters.decode_errors,
            sink=runner.counters.sink_errors,
            spool=spool.overflowed if spool is not None else 0,
            callback=runner.counters.callback_errors,
        ),
        # The kernel's log is a source like the hooks: 0 when unreadable.
        hooks=[(h.name, h.attached) for h in session.hooks]
        + [("kmsg", kernel_log.reader is not None)],
        spool_depth=(lambda: len(spool)) if spool is not None else None,
        spool_oldest_at=spool.oldest_written_at if spool is not None else None,
        seconds_missed=lambda: runner.sampler.points_missed,
    )
    # /healthz answers once the programs are attached (this runs after),
    # and says 503 when the event loop stops going round: the DaemonSet's
    # readiness and liveness probes.
    port = metrics.serve(address, health=runner.health)
    log.info("metrics.serving", address=address, port=port)
