"""The kernel's OOM report, parsed from kmsg records of several kernel
versions, with interleaved, cut and garbled input."""

from __future__ import annotations

from pathlib import Path

from oomtrace.agent.kernel_log.reports import KmsgRecord, ParsedReport, ReportParser, parse_record

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def records(name: str) -> list[KmsgRecord]:
    out = []
    for line in (FIXTURES / name).read_text().splitlines():
        rec = parse_record(line.encode())
        assert rec is not None, line
        out.append(rec)
    return out


def reports(recs: list[KmsgRecord]) -> list[ParsedReport]:
    p = ReportParser()
    return [r for rec in recs if (r := p.feed(rec)) is not None]


def test_report_of_this_kernel() -> None:
    (r,) = reports(records("kmsg-oom-memcg-6.18.44-fc-v657.txt"))
    assert not r.ratelimited
    assert (r.invoker_comm, r.gfp_mask, r.order) == ("python3", "0xcc0(GFP_KERNEL)", 0)
    assert r.counters["memory"] == (65536, 65536, 0)
    assert r.counters["memory+swap"] == (65536, 65536, 0)
    assert r.stats["total_inactive_anon"] == 66764800
    (task,) = r.tasks
    assert (task.pid, task.name) == (23044, "python3")
    assert task.values["rss_anon_pages"] == 16320
    assert task.values["pgtables_bytes"] == 188416
    assert r.constraint == "CONSTRAINT_MEMCG"
    assert r.constraint_fields["task_memcg"] == "/oomtrace-test-88f82df9/workload"
    assert (r.victim_pid, r.killed["anon"], r.killed["pgtables"]) == (23044, 65280, 184)
    assert (r.first_seq, r.last_seq) == (26237, 26314)
    assert r.unparsed < 40  # the stack dump and registers are kept raw, not parsed


def test_report_in_the_6_1_format() -> None:
    (r,) = reports(records("kmsg-oom-memcg-6.1-format.txt"))
    assert r.counters["swap"] == (0, 0, 0)
    assert r.stats == {"anon": 66002944, "file": 0, "kernel": 1200128, "pgfault": 16502}
    assert [t.pid for t in r.tasks] == [1230, 1234]
    assert "rss_anon_pages" not in r.tasks[1].values
    assert r.tasks[1].values["rss_pages"] == 16200
    assert r.killed["uid"] == 0


def test_report_in_the_4_19_format() -> None:
    (r,) = reports(records("kmsg-oom-memcg-4.19-format.txt"))
    assert r.gfp_mask == "0x6000c0(GFP_KERNEL)"
    assert r.stats["rss"] == 64436 * 1024
    assert r.counters["kmem"][0] == 1100
    assert r.victim_pid == 777
    assert "uid" not in r.killed  # 4.19 printed no UID
    assert r.constraint == ""


def test_other_subsystems_lines_in_between_are_ignored() -> None:
    recs = records("kmsg-oom-memcg-6.18.44-fc-v657.txt")
    noise = [KmsgRecord(1, 1, "eth0: link becomes ready"), KmsgRecord(2, 2, "[ 1] not a task row")]
    mixed = recs[:40] + noise + recs[40:]
    (r,) = reports(mixed)
    assert len(r.tasks) == 1
    assert r.victim_pid == 23044


def test_ratelimited_report_still_yields_the_kill() -> None:
    recs = records("kmsg-oom-memcg-6.18.44-fc-v657.txt")
    (r,) = reports([recs[-1]])
    assert r.ratelimited
    assert r.victim_pid == 23044
    assert r.killed["total_vm"] == 76656


def test_report_cut_short_is_dropped_for_the_next_one() -> None:
    first = records("kmsg-oom-memcg-6.1-format.txt")
    second = records("kmsg-oom-memcg-6.18.44-fc-v657.txt")
    got = reports(first[:10] + second)  # the first lost its end (ring wrapped)
    assert [r.victim_pid for r in got] == [23044]


def test_malformed_records_are_refused() -> None:
    assert parse_record(b"no header here") is None
    assert parse_record(b"6,x,1,-;text") is None
    assert parse_record(b"6,1;text") is None
    rec = parse_record(b"6,5,77,-;hello\n SUBSYSTEM=net\n")
    assert rec == KmsgRecord(5, 77, "hello")


def test_report_in_the_5_10_format_of_a_kubernetes_container() -> None:
    (r,) = reports(records("kmsg-oom-memcg-5.10-format.txt"))
    assert r.invoker_oom_score_adj == 968
    assert r.counters["memory"] == (262144, 262144, 51)
    assert r.stats["anon"] == 264617984
    assert [(t.pid, t.name, t.values["uid"]) for t in r.tasks] == [
        (4200, "pause", 65535),
        (4242, "java", 1000),
    ]
    assert r.tasks[0].values["oom_score_adj"] == -998
    assert r.constraint_fields["task_memcg"].startswith("/kubepods/burstable/pod0b7a1c2d")
    assert (r.victim_pid, r.killed["uid"], r.killed["adj"]) == (4242, 1000, 968)


def test_a_process_writing_to_kmsg_cannot_forge_a_kill() -> None:
    """/dev/kmsg forces a writer's lines to facility LOG_USER (<14>...): only
    the kernel's own lines (facility 0) are read as a report."""
    forged = parse_record(
        b"14,900,1,-;Memory cgroup out of memory: Killed process 1 (init) total-vm:1kB, "
        b"anon-rss:1kB, file-rss:0kB, shmem-rss:0kB"
    )
    assert forged is not None
    assert forged.facility == 1
    parser = ReportParser()
    assert parser.feed(forged) is None
    assert parser.foreign == 1
    inside = KmsgRecord(
        901, 2, "x: Killed process 1 (init) total-vm:1kB, anon-rss:1kB, file-rss:0kB, shmem-rss:0kB"
    )
    assert parser.feed(inside) is None  # "Killed process" must start the kill line


def test_a_report_with_nothing_to_kill_is_closed_not_carried_on() -> None:
    """A memcg OOM with no killable task ends with "Out of memory and no
    killable processes..."; the 200,000 lines after it are not the next
    record's."""
    recs = records("kmsg-oom-memcg-6.18.44-fc-v657.txt")
    head = [r for r in recs if "Killed process" not in r.text]
    end = KmsgRecord(
        head[-1].seq + 1, head[-1].ts_us + 1, "Out of memory and no killable processes..."
    )
    noise = [KmsgRecord(10**6 + i, recs[-1].ts_us, f"net: frame {i}") for i in range(200_000)]
    parser = ReportParser()
    out = [r for rec in [*head, end, *noise] if (r := parser.feed(rec))]
    assert out == []
    assert parser.expired == 1
    (r,) = reports(recs)  # a whole report afterwards is read as before
    assert len(r.lines) < 200


def test_a_report_left_open_expires_by_age() -> None:
    recs = records("kmsg-oom-memcg-6.18.44-fc-v657.txt")
    head = [r for r in recs if "Killed process" not in r.text]
    parser = ReportParser()
    for rec in head:
        parser.feed(rec)
    late = KmsgRecord(head[-1].seq + 1, head[-1].ts_us + 31_000_000, "eth0: link up")
    parser.feed(late)
    assert parser.expired == 1
    # Its Killed line, had it come now, would not carry the old report's lines.
    killed = next(r for r in recs if "Killed process" in r.text)
    (done,) = [parser.feed(KmsgRecord(late.seq + 1, late.ts_us, killed.text))]
    assert done is not None
    assert done.ratelimited  # read on its own, as a ratelimited report
    assert len(done.lines) == 1
