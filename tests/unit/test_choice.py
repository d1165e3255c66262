"""Why this victim: the kernel's badness rule applied to the task table of
real reports (tests/fixtures) and to tables made to show what the adj does.
The privileged tests compare the rule with the kernel's own chosen points
where oom_kill_process can be hooked (the guest kernels)."""

from __future__ import annotations

from oomtrace.agent.explain.choice import Limits, badness, choice, qos_class, total_pages
from oomtrace.agent.record.parts import kernel_report
from oomtrace.v1 import event_pb2
from tests.unit.test_kmsg import records, reports

PAGE = 4096
MIB = 1 << 20
NO_SWAP = Limits(mem_total_bytes=8 << 30, swap_total_bytes=0)


def test_the_badness_rule() -> None:
    # rss + swap + page tables in pages, then the adj in thousandths of totalpages
    assert badness(1000, 10, 8 * PAGE, 0, 16384, PAGE) == 1018
    assert badness(1000, 0, 0, 500, 16384, PAGE) == 1000 + 500 * 16
    assert badness(1000, 0, 0, -500, 16384, PAGE) == 1000 - 500 * 16  # may go below zero
    assert badness(1000, 0, 0, -1000, 16384, PAGE) is None  # never chosen
    assert badness(0, 0, 0, 1000, 999, PAGE) == 0  # totalpages / 1000 first: 0


def test_qos_classes_from_the_kubelets_adj() -> None:
    assert [qos_class(a) for a in (-997, 1000, 2, 999, 0, -999)] == [
        "Guaranteed",
        "BestEffort",
        "Burstable",
        "Burstable",
        "",
        "",
    ]


def test_total_pages_as_oom_kill_c_works_it_out() -> None:
    kr = event_pb2.KernelReport(memcg_limit_bytes=64 * MIB)
    assert total_pages(kr, True, NO_SWAP, PAGE) == (16384, "the memcg's limit")
    swap = Limits(mem_total_bytes=8 << 30, swap_total_bytes=1 << 30)
    kr.memsw_limit_bytes = 96 * MIB  # v1: 32 MiB of swap allowed
    assert total_pages(kr, True, swap, PAGE)[0] == (96 * MIB) // PAGE
    kr.ClearField("memsw_limit_bytes")  # v2: swap.max, at most the swap there is
    assert total_pages(kr, True, swap, PAGE, swap_max_bytes=16 * MIB)[0] == (80 * MIB) // PAGE
    assert total_pages(kr, False, swap, PAGE) == ((9 << 30) // PAGE, "RAM and swap")


def report_of(name: str) -> event_pb2.KernelReport:
    (r,) = reports(records(name))
    return kernel_report(r)


def test_the_victim_of_a_real_report_ranks_first() -> None:
    """Each fixture's victim (the "Killed process" line) is the candidate the
    rule puts first."""
    for name, victim in (
        ("kmsg-oom-memcg-6.18.44-fc-v657.txt", None),
        ("kmsg-oom-memcg-6.1-format.txt", None),
        ("kmsg-oom-memcg-5.10-format.txt", None),
    ):
        (r,) = reports(records(name))
        kr = kernel_report(r)
        c = choice(kr, victim or r.victim_pid, memcg_oom=True, limits=NO_SWAP, page_size=PAGE)
        assert c is not None, name
        assert c.victim_rank == 1, (name, c)
        assert c.tasks == len(kr.tasks)
        (v,) = [x for x in c.candidates if x.victim]
        assert v.pid == r.victim_pid


def table(*rows: tuple[int, str, int, int]) -> event_pb2.KernelReport:
    """(pid, name, rss MiB, oom_score_adj) rows in a 256 MiB memcg's report."""
    kr = event_pb2.KernelReport(memcg_limit_bytes=256 * MIB)
    for pid, name, rss_mib, adj in rows:
        kr.tasks.add(pid=pid, tgid=pid, name=name, rss_bytes=rss_mib * MIB, oom_score_adj=adj)
    return kr


def test_a_besteffort_sidecar_outscores_the_process_that_used_the_memory() -> None:
    kr = table((1, "pause", 1, -998), (10, "app", 100, 500), (20, "sidecar", 20, 1000))
    c = choice(kr, 20, memcg_oom=True, limits=NO_SWAP, page_size=PAGE)
    assert c is not None
    assert c.victim_rank == 1
    assert c.adj_decided  # app held five times the memory
    first, second = c.candidates[0], c.candidates[1]
    assert (first.name, first.qos_class, first.victim) == ("sidecar", "BestEffort", True)
    assert (second.name, second.qos_class) == ("app", "Burstable")
    assert first.points == 20 * 256 + 1000 * (65536 // 1000)
    assert first.adj_points == 1000 * 65


def test_memory_alone_decides_when_the_victim_used_the_most() -> None:
    kr = table((10, "app", 200, 0), (20, "sidecar", 20, 0))
    c = choice(kr, 10, memcg_oom=True, limits=NO_SWAP, page_size=PAGE)
    assert c is not None
    assert c.victim_rank == 1
    assert not c.adj_decided


def test_the_kernels_own_totalpages_is_used_where_it_was_read() -> None:
    kr = table((10, "app", 200, 500), (20, "sidecar", 20, 1000))
    c = choice(
        kr,
        20,
        memcg_oom=True,
        limits=NO_SWAP,
        page_size=PAGE,
        kernel_total_pages=100_000,
        kernel_chosen_points=5120 + 100_000,
    )
    assert c is not None
    assert c.total_pages == 100_000
    assert c.total_pages_from == "the kernel's own (oom_control)"
    assert c.candidates[0].points == c.kernel_chosen_points


def test_no_table_no_choice() -> None:
    assert (
        choice(event_pb2.KernelReport(), 1, memcg_oom=True, limits=NO_SWAP, page_size=PAGE) is None
    )


def test_show_and_the_verdict_say_the_adj_decided() -> None:
    from oomtrace import render
    from oomtrace.agent.explain.verdicts import verdicts

    ev = event_pb2.OomEvent(constraint=event_pb2.OomEvent.MEMCG)
    ev.victim.pid = 20
    ev.kernel_report.CopyFrom(table((10, "app", 100, 500), (20, "sidecar", 20, 1000)))
    ev.pod.qos_class = "BestEffort"
    c = choice(ev.kernel_report, 20, memcg_oom=True, limits=NO_SWAP, page_size=PAGE)
    assert c is not None
    ev.choice.CopyFrom(c)
    lines = render.choice_table(ev.choice)
    assert lines[0].startswith("why this victim")
    assert lines[2].split()[:3] == ["→", "20", "sidecar"], lines
    assert "BestEffort" in lines[2]
    assert "its oom_score_adj decided" in lines[-1]
    (v,) = [v for v in verdicts(ev) if v.code == "VICTIM_CHOSEN_BY_OOM_SCORE_ADJ"]
    assert "ahead of app[10] (100 MiB, oom_score_adj 500, Burstable)" in v.explanation
    assert "added 65000 points to the 5120 its memory earned" in v.explanation
    assert "its pod is BestEffort: give it memory requests" in v.suggestion
