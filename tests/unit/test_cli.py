"""The CLI as a person uses it: against a real collector in this process,
including one that restarts under a watch."""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path

import grpc
import pytest
import yaml

from oomtrace import cli, logs
from oomtrace.cli import queries
from oomtrace.collector.service import create_server
from oomtrace.collector.sqlite import SqliteStore
from tests.unit.events import BASE_NS, make_event

# The test records are from September 2026: ask from before them, whatever
# today's date is.
SINCE = ["--since", "2026-01-01T00:00:00Z"]


class Collector:
    def __init__(self, db: Path, port: int = 0) -> None:
        self.store = SqliteStore(db)
        self.server, self.port, _ = create_server(f"127.0.0.1:{port}", self.store)
        self.server.start()
        self.addr = f"127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.stop(0).wait(5)
        self.store.close()


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    """cli.main configures structlog for the process, bound to the stderr of
    the moment: here capsys's, closed after each test, which later tests
    would then log into."""
    monkeypatch.setattr(logs, "configure", lambda level: None)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "c.db")
    yield c
    c.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_version_and_log_level_after_the_subcommand(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip().startswith("oomtrace 0.")
    args = cli.build_parser().parse_args(["history", "--log-level", "debug"])
    assert args.log_level == "debug"
    assert cli.build_parser().parse_args(["--log-level", "error", "top"]).log_level == "error"
    assert cli.log_level(cli.build_parser().parse_args(["top"])) == "info"
    assert cli.log_level(cli.build_parser().parse_args(["doctor"])) == "warning"
    assert cli.log_level(cli.build_parser().parse_args(["doctor", "--log-level", "info"])) == "info"


def _subparsers(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_subcommand_and_option_has_help_and_every_subcommand_examples() -> None:
    parser = cli.build_parser()
    for name, sub in _subparsers(parser).items():
        epilog = sub.epilog or ""
        assert "examples:" in epilog, name
        assert "oomtrace " + name in epilog, name
        for action in sub._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = sub.format_help()
        if name == "history":
            assert "(default: 7d)" in text
            assert "(default: 50)" in text


def test_flags_are_checked_before_connecting(capsys: pytest.CaptureFixture[str]) -> None:
    """A bad flag against a collector that is down is a bad flag, said at
    once, as argparse says it: the sub-command's usage, the flag, exit 2."""
    started = time.monotonic()
    down = ["--collector", "127.0.0.1:1"]
    for argv, said in (
        (["history", "--since", "last tuesday"], "argument --since: 'last tuesday' is not a time"),
        (["top", "--since", "1h", "--until", "2h"], "argument --until: 2h is not after --since 1h"),
        (["history", "--constraint", "oops"], "argument --constraint: 'oops' is not one of global"),
        (["history", "--source", "dmesg"], "argument --source: 'dmesg' is not one of live"),
        (["history", "-l", "=shop"], "argument -l/--selector: '=shop' is not a label"),
        (["history", "--workload", "shop"], "argument --workload: 'shop' is not Kind/name"),
        (["history", "-o", "xml"], "argument -o/--output: 'xml' is not an output format"),
        (["history", "-o", "jsonpath={.id"], "argument -o/--output: jsonpath: unclosed brace"),
        (["top", "-o", "custom-columns=ID"], "'ID' is not NAME:.path"),
        (["show", "a/b"], "argument id: 'a/b' is not a record id"),
        (["history", "-n", "shop", "-A"], "argument -A/--all-namespaces: not allowed with"),
        (["history", "--bogus"], "unrecognized arguments: --bogus"),
    ):
        with pytest.raises(SystemExit) as bad:
            cli.main([*argv, *down])
        err = capsys.readouterr().err
        assert bad.value.code == 2, argv
        assert f"usage: oomtrace {argv[0]} " in err, err  # the sub-command's usage
        assert "oomtrace: error: " not in err or f"oomtrace {argv[0]}: error: " in err, err
        assert said in err, err
        assert "unreachable" not in err
    assert time.monotonic() - started < 5  # it did not wait for a connection


def test_addresses_name_what_is_wrong(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, said in (
        (["history", "--collector", "foo:bar"], "the port 'bar' is not a number"),
        (["history", "--collector", "foo"], "'foo' has no port"),
        (["history", "--collector", "foo:70000"], "the port 70000 is not in 1..65535"),
        (["history", "--collector", "::1:50051"], "an IPv6 address goes in brackets"),
        (["agent", "--stdout", "--collector", "a:1,b"], "'b' has no port"),
        (["collector", "--listen", "0.0.0.0:x"], "the port 'x' is not a number"),
    ):
        with pytest.raises(SystemExit) as bad:
            cli.main(argv)
        err = capsys.readouterr().err
        assert bad.value.code == 2
        assert said in err, err
    args = cli.build_parser().parse_args(["collector", "--listen", "127.0.0.1:0"])
    assert args.listen == "127.0.0.1:0"
    args = cli.build_parser().parse_args(["history", "--collector", "[::1]:50051"])
    assert args.collector == "[::1]:50051"


def test_pressure_rejects_filters_that_do_not_apply(capsys: pytest.CaptureFixture[str]) -> None:
    for flag in (["--comm", "python3"], ["--constraint", "memcg"]):
        with pytest.raises(SystemExit) as bad:
            cli.build_parser().parse_args(["pressure", *flag])
        assert bad.value.code == 2
        err = capsys.readouterr().err
        assert "unrecognized arguments" in err
        assert "usage: oomtrace pressure " in err
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["history", "--limit", "0"])


def test_show_takes_the_prefix_history_prints(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    a = make_event(event_id="5a1e" + "1" * 28, namespace="shop", pod="cart-7d9f8b6c5-x2x4q")
    b = make_event(event_id="5a1f" + "2" * 28)
    collector.store.put_many([a, b])
    rc, out, _ = run(capsys, "history", *SINCE, "--collector", collector.addr)
    assert rc == 0
    assert a.id[:12] in out
    rc, out, _ = run(capsys, "show", a.id[:12], "--collector", collector.addr)
    assert rc == 0
    assert out.startswith(f"OOM kill {a.id}")
    rc, _, err = run(capsys, "show", "5a1", "--collector", collector.addr)
    assert rc == 1
    assert f"ambiguous: it matches {a.id}, {b.id}" in err
    rc, out, _ = run(capsys, "show", a.id[:6], "-o", "yaml", "--collector", collector.addr)
    assert yaml.safe_load(out)["id"] == a.id
    rc, out, _ = run(capsys, "show", a.id[:6], "--json", "--collector", collector.addr)
    assert json.loads(out)["id"] == a.id


def test_machine_readable_and_wide_output(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    evs = [make_event(namespace="shop", pod=p) for p in ("cart-7d9f8b6c5-x2x4q", "db-0", "db-0")]
    collector.store.put_many(evs)
    at = ["--collector", collector.addr, *SINCE]
    rc, out, _ = run(capsys, "top", "--by", "pod", "-o", "json", *at)
    rows = [json.loads(line) for line in out.splitlines()]
    # JSON numbers, not protobuf's strings for 64-bit integers.
    assert [(r["key"], r["kills"]) for r in rows] == [
        ("shop/db-0", 2),
        ("shop/cart-7d9f8b6c5-x2x4q", 1),
    ]
    rc, out, _ = run(capsys, "top", "--by", "workload", *at)
    assert out.splitlines()[0].split()[:2] == ["NAMESPACE/WORKLOAD", "KILLS"]
    assert "shop/StatefulSet/db" in out.splitlines()[1]
    rc, out, _ = run(capsys, "history", "-o", "yaml", *at)
    assert [r["id"] for r in yaml.safe_load(out)] == [e.id for e in reversed(evs)]
    rc, out, _ = run(capsys, "history", "-o", "wide", *at)
    head = out.splitlines()[0].split()
    assert "WORKLOAD" in head
    assert "IMAGE" in head
    assert evs[0].id in out  # the whole id
    assert "StatefulSet/db" in out
    rc, out, _ = run(capsys, "pressure", "-o", "json", *at)
    assert (rc, out) == (0, "")


def test_watch_reconnects_and_shows_what_it_missed_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The collector goes down under a watch and comes back on the same
    address; a record stored while the watch was away is shown once it is
    back, a new one after it too, and nothing twice."""
    from tests.unit.test_collector_service import ingest

    first = Collector(tmp_path / "c.db")
    r1, r2, r3 = (make_event(namespace="shop") for _ in range(3))
    first.store.put_many([r1])
    naps: list[float] = []
    resume, stop = threading.Event(), threading.Event()

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        resume.wait(20)
        if stop.is_set():
            raise KeyboardInterrupt

    args = cli.build_parser().parse_args(
        ["watch", "--namespace", "shop", "--collector", first.addr, *SINCE]
    )
    result: list[int] = []

    def watching() -> None:
        try:
            result.append(queries.watch(args, sleep=sleep))
        except KeyboardInterrupt:
            result.append(cli.EXIT_INTERRUPTED)  # what main() makes of it

    t = threading.Thread(target=watching)
    t.start()
    try:
        shown = _wait_for(capsys, r1.id)  # replayed: stored since --since
        first.stop()
        _until(lambda: bool(naps), "the watch noticing the collector went away")
        second = Collector(tmp_path / "c.db", first.port)
        second.store.put_many([r2])  # stored while the watch was away
        resume.set()
        shown += _wait_for(capsys, r2.id)
        with grpc.insecure_channel(second.addr) as ch:
            ingest(ch, [r3])  # new, as an agent sends it
        shown += _wait_for(capsys, r3.id)
        stop.set()
        second.stop()
        t.join(20)
    finally:
        resume.set()
        stop.set()
    assert result == [cli.EXIT_INTERRUPTED]
    assert "reconnecting in 0.5 s" in shown + capsys.readouterr().err or naps[0] == 0.5
    ids = [line.rsplit("id=", 1)[1] for line in shown.splitlines() if "OOM kill" in line]
    assert ids == [r1.id, r2.id, r3.id]


def _until(cond: Callable[[], bool], what: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.02)


def _wait_for(capsys: pytest.CaptureFixture[str], ident: str) -> str:
    out = ""

    def seen() -> bool:
        nonlocal out
        out += capsys.readouterr().out
        return ident in out

    _until(seen, f"{ident} to be shown")
    return out


def test_times_are_shown_with_their_zone() -> None:
    from datetime import timedelta, timezone

    from oomtrace import render

    ev = make_event(killed_at_ns=BASE_NS)
    line = render.one_line(ev, tz=timezone(timedelta(hours=1), "CET"))
    assert line.startswith("2026-09-21 15:13:20 CET OOM kill")
    assert render.at(BASE_NS / 1e9, UTC).endswith(" UTC")


def test_the_query_commands_load_no_agent_or_collector_code() -> None:
    """The CLI's query side reads the wire contract and oomtrace.records only."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from oomtrace import cli, client, render\n"
        "cli.build_parser().parse_args(['history'])\n"
        "print(sorted(m for m in sys.modules if m.startswith(('oomtrace.agent', 'oomtrace.collector'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_show_names_the_sites_and_pprof_writes_the_profile(
    collector: Collector, capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    """A Go victim's record as the collector keeps it: `show` lists the top
    allocation sites, `pprof` writes the file unchanged; a record without a
    profile says why."""
    import gzip

    from oomtrace.v1 import pprof_pb2

    profile = pprof_pb2.Profile(string_table=["", "inuse_space", "bytes"], period=524288)
    data = gzip.compress(profile.SerializeToString())
    a = make_event(event_id="6b00" + "1" * 28)
    hp = a.go.heap_profile
    hp.pprof, hp.sample_rate, hp.buckets, hp.inuse_bytes = data, 524288, 12, 40 << 20
    hp.top.add(function="main.leakAlpha", file="/src/main.go", line=40, inuse_bytes=30 << 20)
    hp.growth.add(function="main.leakBeta", file="/src/main.go", line=43, inuse_bytes=8 << 20)
    before = a.go.heap_profile_before
    before.pprof, before.buckets, before.inuse_bytes = data[::-1], 9, 32 << 20
    before.taken_ns_before_kill, before.memcg_percent = 2_500_000_000, 84
    b = make_event(event_id="6b01" + "2" * 28)
    b.go.heap_profile_missing = "the linker turned memory profiling off in this binary"
    collector.store.put_many([a, b])
    assert cli.main(["show", a.id[:12], "--collector", collector.addr]) == 0
    out = capsysbinary.readouterr().out.decode()
    assert "heap profile 40.0 MiB in use at the last GC, 12 stacks" in out, out
    assert "30.0 MiB  75%  main.leakAlpha (main.go:40)" in out, out
    # The record's own id in the suggestion, and the file's figures named as such.
    assert f"`oomtrace pprof {a.id} > heap.pb.gz` writes these figures" in out, out
    assert (
        "grew since  the profile 2.5 s before the kill (32.0 MiB in use, memory cgroup at 84 %"
        in out
    )
    assert "+8.0 MiB 100%  main.leakBeta (main.go:43)" in out, out
    assert cli.main(["pprof", a.id[:12], "--collector", collector.addr]) == 0
    assert capsysbinary.readouterr().out == data
    assert cli.main(["pprof", "--before", a.id[:12], "--collector", collector.addr]) == 0
    assert capsysbinary.readouterr().out == data[::-1]
    assert cli.main(["pprof", b.id[:12], "--collector", collector.addr]) == 1
    err = capsysbinary.readouterr().err.decode()
    assert "has no heap profile: the linker turned memory profiling off" in err
