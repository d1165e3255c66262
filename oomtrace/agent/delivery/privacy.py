"""What must not leave the node: secrets in command lines, and build settings
that can carry them. Applied to every record at the one place records leave
(Runner._send), whoever built them.

Command lines are redacted by default (`--cmdline redact`): the value of any
key=value or --flag value whose name says password, token, secret, key,
credential or the like; URL userinfo; bearer and basic authorization; and the
shapes of common cloud keys. `--cmdline drop` keeps none of it, `keep` all of
it; `--redact-pattern REGEX` adds patterns (the whole match is replaced, or
only its first group when it has one). A Go binary's build settings are kept
only on an allowlist: -ldflags can hold `-X main.key=...`."""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from oomtrace.v1 import event_pb2

REDACTED = "<redacted>"

# Names that say "this value is a secret".
_SECRET_NAME = (
    r"[\w.-]*(?:passw(?:or)?d|passwd|pwd|secret|token|api[-_]?key|access[-_]?key|"
    r"private[-_]?key|client[-_]?secret|credentials?|authorization|auth[-_]?(?:token|key)|"
    r"session[-_]?(?:id|key|token)|cookie|signature)[\w.-]*"
)

# Each pattern's group 1 (or the whole match) is replaced.
BUILTIN_PATTERNS: tuple[re.Pattern[str], ...] = (
    # MySQL's and MariaDB's clients take -pSECRET (a password glued to -p;
    # elsewhere -p is a port or a pid); first, so that the secret itself is
    # never read as a flag's name below
    re.compile(r"^(?:\S*/)?(?:mysql|mariadb)[\w-]*\s(?:.*\s)?-p([^\s-]\S*)"),
    # key=value, --key=value, KEY=value
    re.compile(rf"(?i)(?:^|(?<=[\s'\"]))-{{0,2}}{_SECRET_NAME}=(\S+)"),
    # --key value, -key value (the next word)
    re.compile(rf"(?i)(?:^|(?<=\s))--?{_SECRET_NAME}\s+([^\s-]\S*)"),
    # URL userinfo: scheme://user:password@host
    re.compile(r"(?i)\b[a-z][a-z0-9+.-]*://[^\s/:@]*:([^\s/@]+)@"),
    # Authorization: Bearer xxx / Basic xxx (headers in curl -H and the like)
    re.compile(r"(?i)\b(?:bearer|basic)\s+([A-Za-z0-9._~+/=-]{8,})"),
    # AWS access key id, GitHub, Slack, Google API keys, JWTs, private key blocks
    re.compile(r"\b((?:AKIA|ASIA)[0-9A-Z]{16})\b"),
    re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{30,})\b"),
    re.compile(r"\b(xox[abprs]-[A-Za-z0-9-]{10,})\b"),
    re.compile(r"\b(AIza[0-9A-Za-z_-]{35})\b"),
    re.compile(r"\b(eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"),
    re.compile(r"(-----BEGIN [A-Z ]*PRIVATE KEY-----.*?(?:-----END [A-Z ]*PRIVATE KEY-----|$))"),
)

# Build settings safe to ship (Go's own keys; anything else, -ldflags above
# all, stays home).
BUILD_SETTINGS_KEPT = frozenset(
    {
        "-buildmode",
        "-compiler",
        "-trimpath",
        "-race",
        "-tags",
        "CGO_ENABLED",
        "GOARCH",
        "GOOS",
        "GOAMD64",
        "GOARM64",
        "DefaultGODEBUG",
        "vcs",
        "vcs.revision",
        "vcs.time",
        "vcs.modified",
    }
)


class CmdlinePolicy(enum.Enum):
    REDACT = "redact"
    DROP = "drop"
    KEEP = "keep"


def redact(text: str, patterns: Sequence[re.Pattern[str]] = BUILTIN_PATTERNS) -> str:
    for pattern in patterns:
        text = pattern.sub(_replace, text)
    return text


def _replace(m: re.Match[str]) -> str:
    if m.re.groups == 0 or m.group(1) is None:
        return REDACTED
    start, end = m.span(1)
    whole = m.group(0)
    return whole[: start - m.start()] + REDACTED + whole[end - m.start() :]


@dataclass(frozen=True)
class Privacy:
    cmdline: CmdlinePolicy = CmdlinePolicy.REDACT
    extra_patterns: tuple[re.Pattern[str], ...] = field(default_factory=tuple)

    def apply(self, ev: event_pb2.OomEvent) -> None:
        """Redacts the record in place before it goes anywhere."""
        # A userspace killer's log line often quotes its victim's command
        # line (earlyoom's does): it is treated as one.
        if self.cmdline is CmdlinePolicy.DROP:
            if ev.victim.cmdline:
                ev.victim.cmdline = ""
                ev.missing.append("victim.cmdline: not recorded (--cmdline drop)")
            if ev.killer.said:
                ev.killer.said = ""
                ev.missing.append("killer.said: not recorded (--cmdline drop)")
        elif self.cmdline is CmdlinePolicy.REDACT:
            patterns = BUILTIN_PATTERNS + self.extra_patterns
            ev.victim.cmdline = redact(ev.victim.cmdline, patterns)
            if ev.killer.said:
                ev.killer.said = redact(ev.killer.said, patterns)
        if ev.HasField("go"):
            settings = ev.go.build_settings
            for key in [k for k in settings if k not in BUILD_SETTINGS_KEPT]:
                del settings[key]
