"""`oomtrace doctor` as a person reads it: the report alone on stdout (its
logs and the BPF compiler's words not before it), counters as a table, and
the status file of the agent it is asked about, named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from oomtrace.agent import doctor
from oomtrace.records import DEFAULT_STATUS_FILE

ROOT = Path(__file__).resolve().parents[2]


def _status(path: Path) -> None:
    counters = {
        "records_emitted": 7,
        "kernel_lost": {"kills": 2, "notes": 0},
        "user_lost": {},
        "decode_errors": 0,
    }
    path.write_text(json.dumps({"counters": counters, "hooks": []}))


def _doctor(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "oomtrace", "doctor", "--no-load", *argv],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=60,
    )


def test_json_report_alone_on_stdout_with_the_status_file_it_read(tmp_path: Path) -> None:
    status = tmp_path / "agent-status.json"
    _status(status)
    for argv in (["-o", "json"], ["--json"]):
        done = _doctor(*argv, "--status-file", str(status))
        report = json.loads(done.stdout)  # all of stdout is the one document
        assert report["agent_status_file"] == str(status)
        assert report["agent_status_file_from"] == "--status-file"
        assert report["agent_status"]["counters"]["kernel_lost"] == {"kills": 2, "notes": 0}
        assert "agent_status" in report


def test_counters_are_a_table_and_a_missing_status_is_named(tmp_path: Path) -> None:
    status = tmp_path / "agent-status.json"
    _status(status)
    done = _doctor("--status-file", str(status))
    assert f"status file {status} (--status-file)" in done.stdout
    lines = done.stdout.splitlines()
    assert any(line.split() == ["kernel_lost.kills", "2"] for line in lines), done.stdout
    assert any(line.split() == ["records_emitted", "7"] for line in lines)
    assert "{'" not in done.stdout
    gone = tmp_path / "none.json"
    done = _doctor("--status-file", str(gone))
    assert f"no status at {gone} (--status-file)" in done.stdout


def test_the_running_agents_status_file_is_found_from_its_command_line(tmp_path: Path) -> None:
    """A stand-in /proc: an agent as the console script runs it, one as
    `python -m oomtrace` with a relative --status-file= (read from its
    working directory), a query command, and what is not a process."""
    proc = tmp_path / "proc"
    work = tmp_path / "work"
    work.mkdir()

    def process(pid: str, *argv: str, cwd: Path | None = None) -> None:
        d = proc / pid
        d.mkdir(parents=True)
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        if cwd:
            (d / "cwd").symlink_to(cwd)

    process("100", "/opt/venv/bin/oomtrace", "agent", "--status-file", "/x/status.json")
    process(
        "101", "/usr/bin/python3", "-m", "oomtrace", "agent", "--status-file=var/s.json", cwd=work
    )
    process("102", "/opt/venv/bin/oomtrace", "history", "--status-file", "/nope")
    process("103", "/usr/bin/oomtrace", "agent", "--stdout")
    (proc / "self").mkdir()
    assert doctor.running_agents(proc) == [
        (100, Path("/x/status.json")),
        (101, work / "var/s.json"),
        (103, DEFAULT_STATUS_FILE),
    ]
