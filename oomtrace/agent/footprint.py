"""Keeping the agent small: it runs on every node, and most of what start-up
needs (the kernel's whole BTF, indexed; BCC's LLVM compile) is garbage once
the programs are loaded. Measured with tests/bench/bench_agent.py, which
prints the agent's RSS beside a minimal BCC program's."""

from __future__ import annotations

import ctypes
import os
import pickle
from collections.abc import Callable
from typing import TypeVar

import structlog

log = structlog.get_logger(__name__)

T = TypeVar("T")


def in_child(fn: Callable[[], T]) -> T:
    """fn()'s result, computed in a forked child process. Whatever memory fn
    needed goes back to the system when the child exits: Python's allocator
    keeps the arenas of freed objects (~60 MiB after indexing vmlinux's BTF).
    fn's exception is raised here. Call before any thread starts: fork copies
    only the calling thread."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: compute, send, and leave without cleanup
        status = 0
        try:
            os.close(read_fd)
            try:
                payload = pickle.dumps((True, fn()))
            except Exception as exc:  # noqa: BLE001 - handed to the parent, which raises it
                payload = pickle.dumps((False, exc))
            with os.fdopen(write_fd, "wb") as out:
                out.write(payload)
        except BaseException:  # noqa: BLE001 - the child must never return into the caller
            status = 1
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"the child computing {fn!r} died (wait status {status})")
    ok, value = pickle.loads(data)  # our own child's bytes
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def return_freed_heap() -> None:
    """Hands the C heap's free pages back to the system (glibc keeps what
    BCC's compile freed, ~40 MiB). A no-op where the C library lacks
    malloc_trim."""
    try:
        libc = ctypes.CDLL(None)
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        log.info("memory.trim_unavailable")
        return
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
