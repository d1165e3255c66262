"""`oomtrace agent`: record OOM kills on this node."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from pathlib import Path

from oomtrace.cli import AddCommand
from oomtrace.cli.parsing import address_list, client_tls_arguments, regex
from oomtrace.records import DEFAULT_STATUS_FILE, HIGH_STALL_S, KILLER_WRITES, USERSPACE_KILLERS


def run(args: argparse.Namespace) -> int:
    from oomtrace.agent.cgroups.container_runtimes import RuntimeRoots
    from oomtrace.agent.delivery.privacy import CmdlinePolicy, Privacy
    from oomtrace.agent.errors import AgentError
    from oomtrace.agent.main import run_agent
    from oomtrace.tls import ClientTls

    if not args.stdout and not args.collector:
        print("oomtrace agent: give --stdout, --collector HOST:PORT, or both", file=sys.stderr)
        return 2
    try:
        roots = RuntimeRoots()
        if args.host_root:
            roots = roots.under(args.host_root)
        if args.containerd_state:
            roots = replace(roots, containerd_tasks=tuple(args.containerd_state))
        if args.docker_root:
            roots = replace(
                roots, docker_containers=tuple(d / "containers" for d in args.docker_root)
            )
        if args.runc_root:
            roots = replace(roots, runc_state=tuple(args.runc_root))
        if args.crio_containers:
            roots = replace(roots, crio_containers=tuple(args.crio_containers))
        run_agent(
            runtime_roots=roots,
            stdout=args.stdout,
            collector=args.collector,
            state_dir=args.state_dir,
            spool_dir=args.spool,
            backfill=args.backfill,
            status_file=args.status_file,
            hold_s=args.hold,
            profile_before=(args.profile_before_percent, args.profile_before_window),
            high_stall_s=args.high_stall_seconds,
            userspace_killers=tuple(c for c in args.userspace_killers.split(",") if c),
            killer_writes=args.killer_writes,
            node=args.node,
            cluster=args.cluster,
            metrics_listen=args.metrics_listen,
            privacy=Privacy(CmdlinePolicy(args.cmdline), tuple(args.redact_pattern)),
            client_tls=ClientTls(args.tls_ca, args.tls_cert, args.tls_key, args.insecure),
        )
    except AgentError as exc:
        import structlog

        structlog.get_logger("oomtrace.agent").error("agent.cannot_run", reason=str(exc))
        print(f"oomtrace agent: {exc}", file=sys.stderr)
        return 1
    return 0


def register(add: AddCommand) -> None:
    collector_env = os.environ.get("OOMTRACE_COLLECTOR")
    a = add(
        "agent",
        "record OOM kills on this node (root)",
        "oomtrace agent --stdout",
        "oomtrace agent --collector collector.oomtrace:50051 --node $NODE_NAME",
        "oomtrace agent --collector 127.0.0.1:50051 --host-root /host   # in a container",
    )
    a.add_argument(
        "--stdout", action="store_true", help="print each record as one JSON line on stdout"
    )
    a.add_argument(
        "--collector",
        default=collector_env,
        type=address_list,
        metavar="HOST:PORT",
        help="stream records to this collector, or to the first of several that answers "
        "(a:50051,b:50051) ($OOMTRACE_COLLECTOR when set)",
    )
    a.add_argument(
        "--state-dir",
        type=Path,
        default=Path("/var/lib/oomtrace"),
        help="the agent's durable state: the spool and the kernel-log checkpoint",
    )
    a.add_argument(
        "--spool",
        type=Path,
        help="records wait here, on disk, until the collector acknowledges them "
        "(default: STATE_DIR/spool)",
    )
    a.add_argument(
        "--no-backfill",
        dest="backfill",
        action="store_false",
        help="do not record kills that happened before this agent started",
    )
    a.add_argument("--node", help="node name in records (default: $NODE_NAME, else the hostname)")
    a.add_argument(
        "--cluster",
        help="cluster name in records (default: $OOMTRACE_CLUSTER, else the kubelet "
        "kubeconfig's cluster, else none)",
    )
    a.add_argument(
        "--hold",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="wait at most this long for a victim to exit before recording it",
    )
    a.add_argument(
        "--userspace-killers",
        default=",".join(USERSPACE_KILLERS),
        metavar="COMM,...",
        help="processes (by name, as the kernel keeps it: 15 bytes) whose SIGKILL or SIGTERM "
        "is an OOM kill, recorded like the kernel's; empty: none",
    )
    a.add_argument(
        "--killer-writes",
        choices=KILLER_WRITES,
        default="kprobe",
        help="how a userspace killer's log line before its kill (its reason) is caught: "
        "kprobe on ksys_write where kprobes exist; tracepoint: else the sys_enter_write "
        "tracepoint too, which every syscall on the node then pays for; off",
    )
    a.add_argument(
        "--profile-before-percent",
        type=int,
        choices=range(1, 101),
        default=80,
        metavar="PERCENT",
        help="take a Go process's heap profile at the end of a GC when its memory cgroup "
        "(or a near ancestor) is at this share of its limit, so a kill's record shows what "
        "grew since (100: only at 100 %%)",
    )
    a.add_argument(
        "--profile-before-window",
        type=int,
        default=60,
        metavar="SECONDS",
        help="at most one such profile per process in this many seconds",
    )
    a.add_argument(
        "--high-stall-seconds",
        type=int,
        default=HIGH_STALL_S,
        metavar="SECONDS",
        help="a cgroup held throttled above its memory.high this long, with no OOM kill, "
        "gets pressure records with the reason memory_high_stall and a verdict (cgroup v2)",
    )
    a.add_argument(
        "--status-file",
        type=Path,
        default=DEFAULT_STATUS_FILE,
        help="where the agent writes its counters for `doctor`",
    )
    a.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus metrics on /metrics here, e.g. 0.0.0.0:9601 (default: none)",
    )
    a.add_argument(
        "--cmdline",
        choices=["redact", "drop", "keep"],
        default="redact",
        help="victims' command lines in records: secrets redacted, none at all, or as written",
    )
    a.add_argument(
        "--redact-pattern",
        type=regex,
        action="append",
        default=[],
        metavar="REGEX",
        help="also redact what this matches in command lines (its first group, if it has "
        "one); repeatable",
    )
    client_tls_arguments(a)
    roots = a.add_argument_group("container runtime state (read-only)")
    roots.add_argument(
        "--host-root",
        type=Path,
        help="the host's / as mounted in the agent's container, e.g. /host",
    )
    roots.add_argument(
        "--containerd-state",
        type=Path,
        action="append",
        help="containerd's io.containerd.runtime.v2.task directory (repeatable)",
    )
    roots.add_argument(
        "--docker-root", type=Path, action="append", help="a dockerd --data-root (repeatable)"
    )
    roots.add_argument("--runc-root", type=Path, action="append", help="a runc --root (repeatable)")
    roots.add_argument(
        "--crio-containers",
        type=Path,
        action="append",
        help="CRI-O's overlay-containers directory (repeatable)",
    )
    a.set_defaults(run=run)
