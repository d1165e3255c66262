"""Start-up work done in a child process, so the agent keeps none of it."""

from __future__ import annotations

from pathlib import Path

import pytest

from oomtrace.agent.footprint import in_child, return_freed_heap


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def big_then_small() -> dict[str, int]:
    junk = [str(i) * 4 for i in range(2_000_000)]  # ~150 MiB of Python objects
    return {"kept": len(junk)}


def test_the_result_comes_back_and_the_memory_stays_behind() -> None:
    before = rss_kib()
    assert in_child(big_then_small) == {"kept": 2_000_000}
    assert rss_kib() - before < 20 * 1024  # the child's 150 MiB never came here


def test_the_childs_exception_is_raised_in_the_parent() -> None:
    def fails() -> None:
        raise ValueError("no BTF here")

    with pytest.raises(ValueError, match="no BTF here"):
        in_child(fails)


def test_returning_the_freed_heap_is_harmless() -> None:
    return_freed_heap()
    return_freed_heap()
