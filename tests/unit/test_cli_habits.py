"""The habits every command shares, tried as a person would: in a non-UTC
zone, piped into head, stopped with Ctrl-C, with each output format, and
with the completion and reference page made from the parser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from oomtrace import cli
from oomtrace.cli import completion
from oomtrace.v1 import event_pb2
from tests.unit.events import BASE_NS, make_event
from tests.unit.test_cli import Collector, run

ROOT = Path(__file__).resolve().parents[2]
SINCE = ["--since", "2026-01-01T00:00:00Z"]
BERLIN = {**os.environ, "TZ": "Europe/Berlin", "PYTHONPATH": str(ROOT)}


@pytest.fixture(autouse=True)
def _keep_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    from oomtrace import logs

    monkeypatch.setattr(logs, "configure", lambda level: None)


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[Collector]:
    c = Collector(tmp_path / "c.db")
    yield c
    c.stop()


def oomtrace(*argv: str) -> list[str]:
    return [sys.executable, "-m", "oomtrace", *argv]


def sh(command: str) -> subprocess.CompletedProcess[str]:
    """A pipeline in bash, PIPESTATUS of its first command printed last."""
    return subprocess.run(
        ["bash", "-c", f"{command}; rc=${{PIPESTATUS[0]}}; echo; echo rc=$rc"],
        capture_output=True,
        text=True,
        env=BERLIN,
        timeout=60,
    )


def test_a_closed_pipe_ends_quietly_with_141(collector: Collector) -> None:
    """history -o json | head -c 10, watch -o json | head -n 1, --help | head:
    no traceback; the exit status a program killed by SIGPIPE has, as
    kubectl's."""
    collector.store.put_many([make_event() for _ in range(300)])
    py = f"{sys.executable} -m oomtrace"
    at = f"--collector {collector.addr} --since 2026-01-01T00:00:00Z"
    for command in (
        f"{py} history -o json --limit 300 {at} | head -c 10",
        f"{py} history -o yaml --limit 300 {at} | head -n 1",
        f"{py} watch -o json {at} | head -n 1",
        f"{py} watch {at} 2>/dev/null | head -n 1",
    ):
        done = sh(command)
        assert "Traceback" not in done.stderr, done.stderr
        assert "BrokenPipe" not in done.stderr, done.stderr
        assert done.stdout.strip().endswith("rc=141"), (command, done.stdout[-200:])


def test_ctrl_c_ends_a_watch_with_130_and_no_traceback(collector: Collector) -> None:
    p = subprocess.Popen(
        oomtrace("watch", "--collector", collector.addr),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=BERLIN,
    )
    try:
        assert p.stderr is not None
        assert "watching" in p.stderr.readline()  # it is in its loop
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == cli.EXIT_INTERRUPTED
    assert "Traceback" not in err


def test_a_printed_time_pasted_back_finds_its_record_in_a_non_utc_zone(
    collector: Collector,
) -> None:
    """Under TZ=Europe/Berlin the tables print CEST; `--since` of that time
    (with or without its zone) starts at it, `--until` ends before it; with
    --utc both sides are UTC."""
    ev = make_event(killed_at_ns=BASE_NS)  # 2026-09-21 14:13:20 UTC
    collector.store.put_many([ev])
    at = ["--collector", collector.addr]

    def history(*argv: str) -> str:
        done = subprocess.run(
            oomtrace("history", *at, *argv), capture_output=True, text=True, env=BERLIN
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    out = history("--since", "2026-01-01")
    assert "2026-09-21 16:13:20 CEST" in out
    for since in ("2026-09-21 16:13:20", "2026-09-21 16:13:20 CEST", "2026-09-21T14:13:20Z"):
        assert ev.id[:12] in history("--since", since), since
        assert ev.id[:12] not in history("--since", "2026-01-01", "--until", since), since
    assert ev.id[:12] not in history("--since", "2026-09-21 16:13:21")
    utc = history("--utc", "--since", "2026-09-21 14:13:20")
    assert "2026-09-21 14:13:20 UTC" in utc
    assert ev.id[:12] not in history("--utc", "--since", "2026-09-21 14:13:21")


def test_yesterday_today_now_and_relative_times_are_taken(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    now_ns = time.time_ns()
    ev = make_event(killed_at_ns=now_ns - 30 * 60 * 10**9)  # half an hour ago
    collector.store.put_many([ev])
    at = ["--collector", collector.addr]
    for since, found in (
        ("yesterday", True),
        ("-1h", True),
        ("1h ago", True),
        ("-10m", False),
        ("now", False),
        ("tomorrow", False),
    ):
        rc, out, err = run(capsys, "history", "--since", since, *at)
        assert rc == 0, err
        assert (ev.id[:12] in out) is found, since


def test_filters_reach_the_collector(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    E = event_pb2.OomEvent
    a = make_event(namespace="shop", pod="cart-7d9f8b6c5-x2x4q")
    a.container.labels.update({"app.kubernetes.io/name": "cart", "tier": "web"})
    b = make_event(namespace="shop", pod="db-0")
    b.source = E.KMSG
    c = make_event(namespace="ops", pod="db-0")
    c.constraint = E.GLOBAL
    d = make_event()
    d.source, d.constraint = E.USERSPACE, E.UNKNOWN
    collector.store.put_many([a, b, c, d])
    at = ["--collector", collector.addr, *SINCE, "-o", "jsonpath={.items[*].id}"]

    def ids(*argv: str) -> set[str]:
        rc, out, err = run(capsys, "history", *argv, *at)
        assert rc == 0, err
        return set(out.split())

    assert ids("-n", "shop") == {a.id, b.id}
    assert ids("-A") == {a.id, b.id, c.id, d.id}
    assert ids("--constraint", "MEMCG") == {a.id, b.id}
    assert ids("--constraint", "Global") == {c.id}
    assert ids("--source", "kmsg") == {b.id}
    assert ids("--source", "USERSPACE") == {d.id}
    assert ids("--source", "kernel") == {a.id, b.id, c.id}
    assert ids("--source", "live,userspace") == {a.id, c.id, d.id}
    assert ids("-l", "tier=web") == {a.id}
    assert ids("-l", "tier!=web") == {b.id, c.id, d.id}
    assert ids("-l", "app.kubernetes.io/name in (cart,db),tier") == {a.id}
    assert ids("-l", "!tier") == {b.id, c.id, d.id}
    assert ids("--workload", "StatefulSet/db") == {b.id, c.id}
    assert ids("--workload", "ops/StatefulSet/db") == {c.id}
    _, out, _ = run(
        capsys,
        "top",
        "--by",
        "workload",
        "--source",
        "kmsg",
        "--no-headers",
        "--collector",
        collector.addr,
        *SINCE,
    )
    assert out.split()[:2] == ["shop/StatefulSet/db", "1"]


def test_every_output_format_on_every_listing(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    ev = make_event(namespace="shop", pod="cart-7d9f8b6c5-x2x4q")
    ev.victim.cmdline = "python3 -c\nimport time\nwhile True: pass"
    ev.trigger.pid, ev.trigger.comm = 4242, "allocator"
    collector.store.put_many([ev])
    at = ["--collector", collector.addr, *SINCE]
    for cmd in (["history"], ["top", "--by", "pod"], ["pressure"]):
        for fmt in ("table", "wide", "json", "yaml", "jsonpath={.items}", "custom-columns=A:.x"):
            rc, _, err = run(capsys, *cmd, "-o", fmt, *at)
            assert rc == 0, (cmd, fmt, err)
    rc, out, _ = run(capsys, "history", "-o", "yaml", *at)
    assert "cmdline: |-\n      python3 -c\n      import time\n      while True: pass\n" in out, out
    assert "\n\n" not in out
    assert yaml.safe_load(out)[0]["victim"]["cmdline"] == ev.victim.cmdline
    rc, out, _ = run(capsys, "history", "-o", "json", *at)
    rec = json.loads(out)
    assert isinstance(rec["victim"]["anon_rss_bytes"], int)
    assert rec["victim"]["anon_rss_bytes"] == ev.victim.anon_rss_bytes
    assert rec["killed_at"].endswith("Z")  # a Timestamp keeps its JSON form
    rc, out, _ = run(capsys, "history", "-o", "wide", *at)
    head, row = out.splitlines()
    assert "TRIGGER" in head.split()
    assert "allocator[4242]" in row
    rc, out, _ = run(capsys, "history", "--no-headers", *at)
    assert out.splitlines() == [line for line in out.splitlines() if "WHEN" not in line]
    assert len(out.splitlines()) == 1
    rc, out, _ = run(
        capsys,
        "history",
        "-o",
        "custom-columns=ID:.id,POD:.pod.name,RSS:.victim.anon_rss_bytes",
        *at,
    )
    assert out.split() == [
        "ID",
        "POD",
        "RSS",
        ev.id,
        "cart-7d9f8b6c5-x2x4q",
        str(ev.victim.anon_rss_bytes),
    ]
    rc, out, _ = run(
        capsys,
        "history",
        "-o",
        'jsonpath={range .items[*]}{.id}{"\\t"}{.trigger.comm}{"\\n"}{end}',
        *at,
    )
    assert out == f"{ev.id}\tallocator\n\n"
    rc, out, _ = run(capsys, "show", ev.id[:12], "-o", "jsonpath={.victim.pid}", *at[:2])
    assert out.strip() == str(ev.victim.pid)
    rc, out, err = run(capsys, "pressure", *at)
    assert (out, err.strip()) == ("", "no pressure records match")  # stdout stays clean


def test_watch_takes_every_format(tmp_path: Path, collector: Collector) -> None:
    evs = [make_event(namespace="shop") for _ in range(2)]
    collector.store.put_many(evs)
    for fmt, check in (
        ("yaml", lambda out: [d["id"] for d in yaml.safe_load_all(out)] == [e.id for e in evs]),
        ("wide", lambda out: "trigger=" in out),
        (
            "json",
            lambda out: [json.loads(x)["id"] for x in out.splitlines()] == [e.id for e in evs],
        ),
        ("custom-columns=ID:.id", lambda out: out.split() == ["ID", evs[0].id, evs[1].id]),
    ):
        p = subprocess.Popen(
            oomtrace("watch", "-o", fmt, "--collector", collector.addr, *SINCE),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=BERLIN,
        )
        try:
            time.sleep(0)  # the replay comes first; stop it once both are out
            deadline = time.monotonic() + 20
            out = ""
            assert p.stdout is not None
            while evs[1].id not in out and time.monotonic() < deadline:
                out += p.stdout.readline()
            if fmt == "yaml":
                out += ""  # both documents are whole once the second id is read
        finally:
            p.send_signal(signal.SIGINT)
            rest, err = p.communicate(timeout=20)
        out += rest
        assert check(out), (fmt, out, err)
        assert p.returncode == cli.EXIT_INTERRUPTED


def test_every_command_shows_two_or_three_examples() -> None:
    from tests.unit.test_cli import _subparsers

    for name, sub in _subparsers(cli.build_parser()).items():
        lines = (sub.epilog or "").splitlines()
        assert lines[0] == "examples:", name
        assert (
            2
            <= len([x for x in lines[1:] if x.strip().startswith("oomtrace ") or "oomtrace " in x])
            <= 4
        ), name


def test_bash_completion_is_made_from_the_parser_and_completes(tmp_path: Path) -> None:
    script = tmp_path / "oomtrace.bash"
    script.write_text(completion.bash(cli.build_parser()))
    subprocess.run(["bash", "-n", str(script)], check=True)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (
            f"source {script}; COMP_WORDS=(oomtrace {line}); COMP_CWORD={len(words)}; "
            '_oomtrace; printf "%s\\n" "${COMPREPLY[@]}"'
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        return done.stdout.split()

    assert "history" in complete("hi")
    assert "--constraint" in complete("history", "--cons")
    assert set(complete("history", "--constraint", "")) >= {"memcg", "global"}
    assert "jsonpath=" in complete("top", "-o", "")
    assert "--no-load" in complete("doctor", "--no")


def test_zsh_completion_is_made_from_the_parser(tmp_path: Path) -> None:
    import shutil

    text = completion.zsh(cli.build_parser())
    assert text.startswith("#compdef oomtrace")
    assert "'--constraint[" in text
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed: its syntax check needs it (apt-get install zsh)")
    script = tmp_path / "_oomtrace"
    script.write_text(text)
    subprocess.run([zsh, "-n", str(script)], check=True)


def test_the_reference_page_is_the_parsers_help() -> None:
    """docs/cli.md is generated: regenerate it with
    `oomtrace completion markdown > docs/cli.md` when this fails."""
    made = completion.markdown(cli.build_parser())
    assert (ROOT / "docs" / "cli.md").read_text() == made, (
        "docs/cli.md is stale: run .venv/bin/oomtrace completion markdown > docs/cli.md"
    )
