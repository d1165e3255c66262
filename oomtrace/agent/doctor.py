"""What this host supports, and therefore what the agent will record.

`preflight()` is shared by `oomtrace doctor` and the agent's start, so both
give the same reasons when the agent cannot run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from oomtrace.agent.cgroups import hierarchy as cgroups
from oomtrace.agent.errors import AgentError, HostNotSupportedError
from oomtrace.agent.kernel.bcc_loader import OOM_CONTROL_HOOKS
from oomtrace.agent.kernel.btf import VMLINUX_BTF, Btf
from oomtrace.agent.kernel.layout import KernelLayout, resolve
from oomtrace.agent.kernel.oom_caller import KernelText
from oomtrace.records import DEFAULT_STATUS_FILE

TRACEFS = Path("/sys/kernel/tracing")


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    required: bool
    detail: str


def ensure_tracefs(mount: bool) -> Check:
    if (TRACEFS / "events").is_dir():
        return Check("tracefs", True, True, f"mounted at {TRACEFS}")
    if not mount:
        return Check("tracefs", True, True, f"not mounted; the agent mounts it at {TRACEFS}")
    try:
        subprocess.run(
            ["mount", "-t", "tracefs", "nodev", str(TRACEFS)],
            check=True,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return Check("tracefs", False, True, f"not mounted and mounting failed: {detail.strip()}")
    return Check("tracefs", True, True, f"mounted it at {TRACEFS}")


def preflight(*, mount_tracefs: bool) -> tuple[list[Check], KernelLayout | None]:
    """Every precondition, each with its reason; the layout when BTF allows."""
    checks: list[Check] = []
    root = os.geteuid() == 0
    checks.append(
        Check(
            "root",
            root,
            True,
            "running as root"
            if root
            else "the agent must run as root (BPF, tracefs, /proc of every process)",
        )
    )
    layout = None
    try:
        layout = resolve(Btf.load(VMLINUX_BTF))
        checks.append(Check("btf", True, True, f"{VMLINUX_BTF}: every struct offset resolved"))
    except AgentError as exc:
        checks.append(Check("btf", False, True, str(exc)))
    try:
        import bcc

        checks.append(Check("bcc", True, True, f"bcc from {Path(bcc.__file__).parent}"))
    except ImportError as exc:
        checks.append(
            Check(
                "bcc",
                False,
                True,
                f"cannot import bcc ({exc}): apt-get install python3-bpfcc, and use a python that sees it",
            )
        )
    build = Path(f"/lib/modules/{os.uname().release}/build")
    chosen = os.environ.get("BCC_KERNEL_SOURCE")
    if chosen:
        # Set by the image's entrypoint when the node has no headers.
        found = (Path(chosen) / "include/linux/kconfig.h").exists()
        checks.append(
            Check(
                "kernel_headers",
                found,
                True,
                f"BCC_KERNEL_SOURCE={chosen}"
                + ("" if found else ": no include/linux/kconfig.h there, BCC cannot compile"),
            )
        )
    elif (build / "Makefile").exists():
        checks.append(Check("kernel_headers", True, True, f"{build} -> {build.resolve()}"))
    else:
        checks.append(
            Check(
                "kernel_headers",
                False,
                True,
                f"{build} is missing: BCC compiles against kernel headers; run `make setup` (links Debian's linux-headers-amd64)",
            )
        )
    checks.append(ensure_tracefs(mount_tracefs and root))
    hierarchy = cgroups.memory_hierarchy()
    checks.append(
        Check(
            "memory_cgroup",
            hierarchy.version != 0,
            False,
            f"cgroup v{hierarchy.version} at {hierarchy.mount}"
            if hierarchy.version
            else "no hierarchy has the memory controller: kills are recorded without cgroup paths",
        )
    )
    if layout is not None:
        checks.append(
            Check(
                "ring_buffer",
                layout.has_ringbuf,
                False,
                "BPF ring buffer"
                if layout.has_ringbuf
                else "no BPF ring buffer: using perf buffers",
            )
        )
        checks.append(
            Check(
                "mark_victim_task",
                layout.mark_victim_has_task,
                False,
                "oom:mark_victim hands over the victim task"
                if layout.mark_victim_has_task
                else "oom:mark_victim gives only a pid; the victim's details need the oom_kill_process kprobe",
            )
        )
    return checks, layout


def require(checks: list[Check]) -> None:
    failed = [f"{c.name}: {c.detail}" for c in checks if c.required and not c.ok]
    if failed:
        raise HostNotSupportedError(failed)


def read_status(path: Path = DEFAULT_STATUS_FILE) -> dict[str, Any] | None:
    try:
        status: dict[str, Any] = json.loads(path.read_text())
        status["age_s"] = round(time.time() - path.stat().st_mtime, 1)
        return status
    except (OSError, ValueError):
        return None


_MAX_CMDLINE = 64 * 1024


def running_agents(proc: Path = Path("/proc")) -> list[tuple[int, Path]]:
    """Each `oomtrace agent` running here (in this pid namespace: a
    container's own agent, inside its pod), with the status file it writes:
    its --status-file, or the default."""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            with open(entry / "cmdline", "rb") as f:
                argv = f.read(_MAX_CMDLINE).split(b"\0")
        except OSError:
            continue  # gone, or not ours to read
        words = [a.decode(errors="replace") for a in argv if a]
        # `oomtrace agent ...`, or `python -m oomtrace agent ...`
        head = [w.rsplit("/", 1)[-1] for w in words[:4]]
        if "oomtrace" not in head or "agent" not in head:
            continue
        path = DEFAULT_STATUS_FILE
        for i, w in enumerate(words):
            if w == "--status-file" and i + 1 < len(words):
                path = Path(words[i + 1])
            elif w.startswith("--status-file="):
                path = Path(w.split("=", 1)[1])
        if not path.is_absolute():
            try:
                path = Path(os.readlink(entry / "cwd")) / path
            except OSError:
                path = Path("(its working directory)") / path  # not ours to read
        found.append((int(entry.name), path))
    return sorted(found)


def _quiet_compile(fn: Any) -> tuple[Any, list[str]]:
    """fn() with stderr (fd 2: BCC's clang writes its warnings there) kept
    aside, so they land in the report, not before it."""
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            result = fn()
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            said = tmp.read(64 * 1024).decode(errors="replace")
    return result, [line for line in said.splitlines() if line.strip()]


def status_file_for(given: Path | None) -> tuple[Path, str]:
    """The status file to read, and how it was chosen."""
    if given is not None:
        return given, "--status-file"
    agents = running_agents()
    if agents:
        pid, path = agents[0]
        more = f" (of {len(agents)} agents running)" if len(agents) > 1 else ""
        return path, f"the running agent, pid {pid}{more}"
    return DEFAULT_STATUS_FILE, "the agent's default (no agent is running here)"


def run_doctor(*, load: bool, fmt: str, status_file: Path | None = None) -> int:
    checks, layout = preflight(mount_tracefs=load)
    hooks: list[dict[str, Any]] = []
    load_error = ""
    compiler: list[str] = []
    can_run = all(c.ok for c in checks if c.required)
    if load and can_run and layout is not None:
        from oomtrace.agent.kernel.bcc_loader import BpfSession

        try:
            session, compiler = _quiet_compile(lambda: BpfSession(layout))
            hooks = [asdict(h) for h in session.hooks]
            session.close()
        except AgentError as exc:
            load_error = str(exc)
            can_run = False
    path, chosen = status_file_for(status_file)
    status = read_status(path)
    report: dict[str, Any] = {
        "kernel": os.uname().release,
        "can_run": can_run,
        "checks": [asdict(c) for c in checks],
        "hooks": hooks,
        "load_error": load_error,
        "layout_notes": layout.notes if layout else [],
        "records": _what_is_recorded(layout, hooks),
        "compiler_messages": compiler,
        "agent_status_file": str(path),
        "agent_status_file_from": chosen,
        "agent_status": status,
    }
    if fmt == "json":
        print(json.dumps(report, indent=2))
    elif fmt == "yaml":
        import yaml

        print(yaml.safe_dump(report, sort_keys=False, width=float("inf")), end="")
    else:
        _print_report(report)
    return 0 if can_run else 1


def _what_is_recorded(layout: KernelLayout | None, hooks: list[dict[str, Any]]) -> list[str]:
    if layout is None:
        return []
    attached = {h["name"] for h in hooks if h["attached"]}
    out = ["every OOM kill: victim memory figures, trigger, memcg path, usage and limit"]
    if attached & set(OOM_CONTROL_HOOKS):
        out.append(
            "constraint, oom memcg, totalpages and chosen points from the kernel's oom_control"
        )
    elif reason := KernelText.load().reason:
        out.append(
            "constraint and oom memcg derived from the memcg page counters at the kill "
            f"(the kernel stack cannot place it: {reason})"
        )
    else:
        out.append(
            "constraint from the OOM killer's caller on the kernel stack; "
            "oom memcg from the memcg page counters at the kill"
        )
    if "raw_tracepoint/finish_task_reaping" in attached:
        out.append("reap time when the oom reaper frees a victim")
    return out


def _counter_rows(counters: Any, prefix: str = "") -> list[tuple[str, str]]:
    """Counters, nested ones (kernel_lost by cause) as name.cause, one a row."""
    if not isinstance(counters, dict):
        return [(prefix or "value", str(counters))]
    rows = []
    for k, v in counters.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, dict):
            rows += _counter_rows(v, name) if v else [(name, "0")]
        else:
            rows.append((name, str(v)))
    return rows


def _print_report(r: dict[str, Any]) -> None:
    mark = {True: "ok  ", False: "FAIL"}
    print(f"oomtrace doctor — kernel {r['kernel']}")
    for c in r["checks"]:
        flag = mark[c["ok"]] if c["required"] else ("ok  " if c["ok"] else "note")
        print(f"  [{flag}] {c['name']}: {c['detail']}")
    if r["hooks"]:
        print("hooks:")
        for h in r["hooks"]:
            state = "attached" if h["attached"] else f"skipped ({h['reason']})"
            print(f"  {h['name']}: {state}")
    if r["load_error"]:
        print(f"loading the BPF programs failed: {r['load_error']}")
    for note in r["layout_notes"]:
        print(f"note: {note}")
    if r["records"]:
        print("the agent will record:")
        for line in r["records"]:
            print(f"  - {line}")
    if r["compiler_messages"]:
        print(f"the BPF compiler said ({len(r['compiler_messages'])} line(s)):")
        for line in r["compiler_messages"]:
            print(f"  {line}")
    status = r["agent_status"]
    where = f"{r['agent_status_file']} ({r['agent_status_file_from']})"
    if status:
        print(f"running agent: status file {where}, written {status['age_s']} s ago")
        rows = _counter_rows(status.get("counters", {}))
        width = max((len(k) for k, _ in rows), default=0)
        for k, v in rows:
            print(f"  {k.ljust(width)}  {v}")
    else:
        print(f"running agent: no status at {where}; --status-file names another")
    print(
        "verdict: the agent can run here" if r["can_run"] else "verdict: the agent cannot run here"
    )
