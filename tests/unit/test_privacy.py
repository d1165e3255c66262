"""Nothing private leaves the node: secrets in command lines, and build
settings that can hold them."""

from __future__ import annotations

import re

import pytest

from oomtrace.agent.delivery.privacy import REDACTED, CmdlinePolicy, Privacy, redact
from tests.unit.events import make_event

R = REDACTED


@pytest.mark.parametrize(
    ("cmdline", "redacted"),
    [
        ("mysql -uroot -pSECRET db", f"mysql -uroot -p{R} db"),
        ("app --password=hunter2 --port 80", f"app --password={R} --port 80"),
        ("app --db-password hunter2 --port 80", f"app --db-password {R} --port 80"),
        ("app --api-key=k-123 --token t0k3n", f"app --api-key={R} --token {R}"),
        (
            "env AWS_SECRET_ACCESS_KEY=abc/def python x.py",
            f"env AWS_SECRET_ACCESS_KEY={R} python x.py",
        ),
        (
            "git clone https://user:pa55@example.com/r.git",
            f"git clone https://user:{R}@example.com/r.git",
        ),
        (
            "curl -H 'Authorization: Bearer abcdefghijkl' x",
            f"curl -H 'Authorization: Bearer {R}' x",
        ),
        ("aws --key AKIAABCDEFGHIJKLMNOP", f"aws --key {R}"),
        ("push ghp_abcdefghijklmnopqrstuvwxyz0123456789AB", f"push {R}"),
        ("client eyJhbGciOiJI.eyJzdWIiOiIx.c2lnbmF0dXJl", f"client {R}"),
        (
            "server --config /etc/server.yaml --port 8080",
            "server --config /etc/server.yaml --port 8080",
        ),
        ("java -Xmx512m -jar app.jar", "java -Xmx512m -jar app.jar"),
        ("/usr/bin/mariadb-dump -h db -pS3cr3t! shop", f"/usr/bin/mariadb-dump -h db -p{R} shop"),
        ("psql -h db -p5432 shop", "psql -h db -p5432 shop"),  # psql's -p is a port
        ("server -port 8080 -pidfile /run/x", "server -port 8080 -pidfile /run/x"),
        ("kill --signal TERM 12 --author me", "kill --signal TERM 12 --author me"),
    ],
)
def test_secrets_in_command_lines_are_redacted(cmdline: str, redacted: str) -> None:
    assert redact(cmdline) == redacted


def test_a_record_leaves_with_its_secrets_redacted_and_unsafe_build_settings_gone() -> None:
    ev = make_event()
    ev.victim.cmdline = "svc --token=abc123 --listen :80"
    ev.go.version = "go1.27.3"
    ev.go.build_settings.update(
        {"-ldflags": "-X main.key=s3cr3t", "CGO_ENABLED": "0", "vcs.revision": "abc"}
    )
    Privacy().apply(ev)
    assert ev.victim.cmdline == f"svc --token={R} --listen :80"
    assert dict(ev.go.build_settings) == {"CGO_ENABLED": "0", "vcs.revision": "abc"}
    assert "s3cr3t" not in str(ev)


def test_command_lines_can_be_dropped_or_given_more_patterns() -> None:
    ev = make_event()
    ev.victim.cmdline = "svc --tenant acme-prod"
    Privacy(extra_patterns=(re.compile(r"--tenant\s+(\S+)"),)).apply(ev)
    assert ev.victim.cmdline == f"svc --tenant {R}"
    Privacy(CmdlinePolicy.DROP).apply(ev)
    assert ev.victim.cmdline == ""
    assert "victim.cmdline: not recorded (--cmdline drop)" in ev.missing


def test_a_userspace_killers_log_line_is_treated_as_a_command_line() -> None:
    """earlyoom's line quotes its victim's command line: redacted with the
    same patterns, dropped with --cmdline drop."""
    ev = make_event()
    ev.killer.said = 'sending SIGTERM to process 42 uid 0 "svc": cmdline svc --token=abc123'
    Privacy().apply(ev)
    assert ev.killer.said == f'sending SIGTERM to process 42 uid 0 "svc": cmdline svc --token={R}'
    Privacy(CmdlinePolicy.DROP).apply(ev)
    assert ev.killer.said == ""
    assert "killer.said: not recorded (--cmdline drop)" in ev.missing
