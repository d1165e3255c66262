"""Parses Go binaries off the agent's event loop, in a process of its own.

Any process on a node can hand the agent a binary: a crafted one must cost a
bounded time and memory, and never the agent. So the parse (pclntab, the
code of runtime.gcStart, the ELF header) runs in a child process:
  - one binary at a time, each given `timeout_s`; a parse that takes longer
    gets its worker killed (and a new one started for the next binary), and
    the binary a reason;
  - the worker's own private memory is capped (RLIMIT_DATA): a parse that
    would need more fails with a reason, the agent unharmed; the binary is
    mapped, not read, so its pages are the page cache's;
  - a worker that dies (a crash in the disassembler) is a reason too.
The agent passes the binary as the file it already holds open (SCM_RIGHTS),
so the worker parses exactly what will be probed. The same worker turns a
heap profile's PCs into frames (go/frames.py), from the binary the victim
ran; PCs and frames travel in a memfd, as they can outgrow a message.

The parent side (ParserWorker) never blocks: submit() queues, results()
hands over what is done and enforces the deadline; the event loop calls it
on each pass."""

from __future__ import annotations

import collections
import json
import mmap
import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger(__name__)

PARSE_TIMEOUT_S = 5.0
# The worker's interpreter and imports: seconds under emulation.
STARTUP_TIMEOUT_S = 120.0
# The worker's private memory: Python and capstone need ~30 MiB, a real
# binary's pclntab copy up to 64 MiB (symbols.MAX_PCLNTAB).
DATA_LIMIT_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class Parsed:
    """What the GC probe needs of one binary, or why it cannot be had."""

    error: str = ""  # the binary cannot be probed: why
    gc_done: int = 0  # where the uprobe goes
    pie: bool = False
    entry: int = 0
    # (gcController, gomaxprocs) link-time addresses, or why not
    globals: tuple[int, int] | None = None
    globals_reason: str = ""
    # (runtime.mbuckets, runtime.MemProfileRate, profiling disabled by the
    # linker) link-time, or why the heap profile cannot be walked
    profile: tuple[int, int, bool] | None = None
    profile_reason: str = ""
    # A symbolize request's answer: per PC, [function, file, line,
    # start_line, entry, inlined] or None
    frames: list[list[Any] | None] | None = None


def parse(fd: int) -> dict[str, Any]:
    """The worker's work on one open binary (also callable in-process)."""
    from oomtrace.agent.runtimes.go.symbols import (
        GC_START,
        MAX_BINARY,
        MPROF_FLUSH,
        SCHEDINIT,
        START_CYCLE,
        SymbolError,
        elf_entry,
        entries_in,
        probe_address,
        profile_globals,
        runtime_globals,
    )

    gc_done_name = "runtime.gcMarkTermination"
    size = os.fstat(fd).st_size
    if size == 0:
        return {"error": "an empty file"}
    with mmap.mmap(fd, min(size, MAX_BINARY), prot=mmap.PROT_READ) as data:
        try:
            entries = entries_in(
                data, {gc_done_name, GC_START, START_CYCLE, MPROF_FLUSH, SCHEDINIT}
            )
            if gc_done_name not in entries:
                raise SymbolError(f"no {gc_done_name} in pclntab")
            gc_done = probe_address(data, entries[gc_done_name], gc_done_name)
            pie, entry = elf_entry(data)
        except SymbolError as exc:
            return {"error": str(exc)}
        out: dict[str, Any] = {"gc_done": gc_done, "pie": pie, "entry": entry}
        try:
            g = runtime_globals(data, entries)
            out["globals"] = [g.gc_controller, g.gomaxprocs]
        except SymbolError as exc:
            out["globals_reason"] = str(exc)
        try:
            pg = profile_globals(data, entries)
            out["profile"] = [pg.mbuckets, pg.mem_profile_rate, pg.disabled]
        except SymbolError as exc:
            out["profile_reason"] = str(exc)
        return out


def symbolize(fd: int, request_fd: int) -> dict[str, Any]:
    """Frames for the PCs in the request memfd ({"pcs": [...], "gofunc":
    moduledata's gofunc offset}); written back into it as a JSON list."""
    from oomtrace.agent.runtimes.go.frames import Symbolizer
    from oomtrace.agent.runtimes.go.symbols import MAX_BINARY, SymbolError

    with os.fdopen(os.dup(request_fd), "r+b") as f:
        f.seek(0)  # the agent's write left the shared offset at the end
        request = json.loads(f.read())
        size = os.fstat(fd).st_size
        if size == 0:
            return {"error": "an empty file"}
        with mmap.mmap(fd, min(size, MAX_BINARY), prot=mmap.PROT_READ) as data:
            try:
                sym = Symbolizer(data, int(request["gofunc"]))
                frames: list[list[Any] | None] = []
                for pc in request["pcs"]:
                    fr = sym.frame(int(pc))
                    frames.append(
                        None
                        if fr is None
                        else [fr.function, fr.file, fr.line, fr.start_line, fr.entry, fr.inlined]
                    )
            except SymbolError as exc:
                return {"error": str(exc)}
        f.seek(0)
        f.truncate()
        f.write(json.dumps(frames).encode())
    return {"frames": True}


def _serve(sock: socket.socket, data_limit: int) -> None:
    """The worker's loop: a request is a JSON id with the binary's fd. It
    says it is ready once its imports are done: the deadline of a parse must
    not include the interpreter's start (seconds under emulation)."""
    from oomtrace.agent.runtimes.go import symbols  # noqa: F401 - imported before "ready"

    resource.setrlimit(resource.RLIMIT_DATA, (data_limit, data_limit))
    sock.send(json.dumps({"ready": True}).encode())
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(sock, 1024, 2)
        if not msg:
            return  # the agent is gone
        request = json.loads(msg)
        try:
            if not fds:
                reply = {"error": "no file was passed"}
            elif request.get("symbolize"):
                reply = symbolize(fds[0], fds[1]) if len(fds) == 2 else {"error": "no request"}
            else:
                reply = parse(fds[0])
        except MemoryError:
            reply = {"error": f"parsing needs more than {data_limit >> 20} MiB"}
        except Exception as exc:  # noqa: BLE001 - a reason for the record, never a crash
            reply = {"error": f"unparsable binary ({type(exc).__name__}: {exc})"}
        finally:
            for fd in fds:
                os.close(fd)
        reply["id"] = request["id"]
        sock.send(json.dumps(reply).encode())


class ParserWorker:
    """The agent's side. Keys are the caller's (a binary's device and inode)."""

    def __init__(
        self, timeout_s: float = PARSE_TIMEOUT_S, data_limit: int = DATA_LIMIT_BYTES
    ) -> None:
        self.timeout_s = timeout_s
        self.data_limit = data_limit
        # key, binary fd, and for a symbolize request the memfd holding it
        self._queue: collections.deque[tuple[Any, int, int]] = collections.deque()
        # key, request id, sent at, request memfd (-1: a parse)
        self._in_flight: tuple[Any, int, float, int] | None = None
        self._next_id = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._done: list[tuple[Any, Parsed]] = []
        self._ready = False  # the worker has said it is ready
        self._started_at = 0.0
        self.restarts = 0  # workers killed for time or lost to a crash

    def start(self) -> None:
        """Starts the worker now (it is started on demand otherwise): the
        agent does it at start-up, so the first Go binary does not wait."""
        if self._proc is None:
            self._start_worker()

    @property
    def pending(self) -> int:
        return len(self._queue) + (self._in_flight is not None)

    def submit(self, key: Any, fd: int) -> None:
        """Queues the binary open as fd (the caller keeps it open until its
        result is in)."""
        self._queue.append((key, fd, -1))
        self._pump()

    def submit_symbolize(self, key: Any, fd: int, pcs: list[int], gofunc: int) -> None:
        """Queues turning link-time return PCs into frames from the binary
        open as fd; the result's `frames` answer them in order."""
        memfd = os.memfd_create("oomtrace-symbolize", os.MFD_CLOEXEC)
        os.write(memfd, json.dumps({"pcs": pcs, "gofunc": gofunc}).encode())
        self._queue.append((key, fd, memfd))
        self._pump()

    def results(self) -> list[tuple[Any, Parsed]]:
        """What is done since the last call; never blocks."""
        self._receive()
        if self._in_flight is not None and time.monotonic() - self._in_flight[2] > self.timeout_s:
            key = self._in_flight[0]
            _close(self._in_flight[3])
            self._stop_worker()
            self._done.append((key, Parsed(error=f"parsing took over {self.timeout_s:g} s")))
            log.warning("go.parse_timeout", timeout_s=self.timeout_s)
        self._pump()
        done, self._done = self._done, []
        return done

    def wait(self, timeout_s: float) -> list[tuple[Any, Parsed]]:
        """Results until nothing is pending or timeout_s has passed (start-up)."""
        deadline = time.monotonic() + timeout_s
        out = self.results()
        while self.pending and time.monotonic() < deadline:
            time.sleep(0.005)
            out += self.results()
        return out

    def close(self) -> None:
        self._stop_worker()

    def _start_worker(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._proc = subprocess.Popen(
            [sys.executable, "-m", __name__, str(child.fileno()), str(self.data_limit)],
            pass_fds=[child.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
        )
        child.close()
        parent.setblocking(False)
        self._sock = parent
        self._ready = False
        self._started_at = time.monotonic()

    def _stop_worker(self) -> None:
        if self._proc is not None:
            if self._in_flight is not None or self._proc.poll() is not None:
                self.restarts += 1
            self._proc.kill()
            self._proc.wait()
            self._proc = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        self._in_flight = None

    def _pump(self) -> None:
        if self._in_flight is not None or not self._queue:
            return
        if self._proc is None or self._proc.poll() is not None:
            self._stop_worker()
            self._start_worker()
        assert self._sock is not None
        if not self._ready:
            try:
                msg = self._sock.recv(1024)
            except BlockingIOError:
                if time.monotonic() - self._started_at > STARTUP_TIMEOUT_S:
                    self._fail_queue(f"the parser did not start in {STARTUP_TIMEOUT_S:g} s")
                return
            if not msg:
                self._fail_queue("the parser exited at start")
                return
            self._ready = True
        key, fd, memfd = self._queue.popleft()
        self._next_id += 1
        request = {"id": self._next_id, "symbolize": memfd >= 0}
        fds = [fd, memfd] if memfd >= 0 else [fd]
        try:
            socket.send_fds(self._sock, [json.dumps(request).encode()], fds)
        except OSError as exc:
            _close(memfd)
            self._done.append((key, Parsed(error=f"the parser is unreachable ({exc.strerror})")))
            self._stop_worker()
            return
        self._in_flight = (key, self._next_id, time.monotonic(), memfd)

    def _fail_queue(self, why: str) -> None:
        """Every queued binary gets the reason; a new worker for the next."""
        log.warning("go.parser_unavailable", reason=why)
        while self._queue:
            key, _fd, memfd = self._queue.popleft()
            _close(memfd)
            self._done.append((key, Parsed(error=why)))
        self._stop_worker()

    def _receive(self) -> None:
        if self._in_flight is None or self._sock is None:
            return
        try:
            msg = self._sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            msg, reason = b"", exc.strerror or str(exc)
        else:
            reason = ""
        key, request_id, _sent, memfd = self._in_flight
        if not msg:  # the worker died mid-parse
            _close(memfd)
            code = self._proc.poll() if self._proc else None
            self._stop_worker()
            why = reason or f"the parser died (exit status {code})"
            self._done.append((key, Parsed(error=why)))
            log.warning("go.parser_died", reason=why)
            return
        self._in_flight = None
        reply = json.loads(msg)
        frames = None
        if memfd >= 0:
            if reply.get("frames"):
                with os.fdopen(memfd, "rb") as f:
                    f.seek(0)
                    frames = json.loads(f.read())
            else:
                _close(memfd)
        if reply.get("id") != request_id:  # cannot happen: one request at a time
            self._done.append((key, Parsed(error="the parser answered another request")))
            return
        g = reply.get("globals")
        pg = reply.get("profile")
        self._done.append(
            (
                key,
                Parsed(
                    error=str(reply.get("error", "")),
                    gc_done=int(reply.get("gc_done", 0)),
                    pie=bool(reply.get("pie", False)),
                    entry=int(reply.get("entry", 0)),
                    globals=(int(g[0]), int(g[1])) if g else None,
                    globals_reason=str(reply.get("globals_reason", "")),
                    profile=(int(pg[0]), int(pg[1]), bool(pg[2])) if pg else None,
                    profile_reason=str(reply.get("profile_reason", "")),
                    frames=frames,
                ),
            )
        )


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


if __name__ == "__main__":
    _serve(socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2]))
