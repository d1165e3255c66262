"""Which records a query asks for: every filter flag, in one place.

FILTERS is the one place to add a filter flag: its flags, its help, which
commands take it (KILLS: history, top, watch; PRESSURE: pressure too), and
how it sets the request's EventFilter. add_arguments() puts them on a
parser, build() turns parsed values into the EventFilter, after every flag
is read (so --utc applies to a --since before it). A value that cannot be
used raises FlagError, naming its flag."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import tzinfo
from typing import Any

from oomtrace.cli import times
from oomtrace.v1 import collector_pb2, event_pb2

KILLS = "kills"
PRESSURE = "pressure"


class FlagError(Exception):
    """A flag's value that cannot be used; main() reports it as argparse
    does (the sub-command's usage, `argument FLAG: ...`, exit 2)."""

    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"argument {flag}: {message}")
        self.flag = flag


@dataclass(frozen=True, slots=True)
class When:
    """What relative times and zone-less times are read against."""

    now: float
    tz: tzinfo | None  # None: the local zone


Apply = Callable[[collector_pb2.EventFilter, Any, When], None]


@dataclass(frozen=True, slots=True)
class FilterFlag:
    flags: tuple[str, ...]
    dest: str
    help: str
    apply: Apply
    commands: frozenset[str] = frozenset({KILLS, PRESSURE})
    options: dict[str, Any] = field(default_factory=dict)
    words: tuple[str, ...] = ()  # what shell completion offers for its value


def _text(name: str) -> Apply:
    def apply(f: collector_pb2.EventFilter, value: str, _: When) -> None:
        setattr(f, name, value)

    return apply


def _time(name: str, flag: str) -> Apply:
    def apply(f: collector_pb2.EventFilter, value: str, when: When) -> None:
        try:
            getattr(f, name).FromDatetime(times.parse(value, now=when.now, tz=when.tz))
        except times.TimeError as exc:
            raise FlagError(flag, str(exc)) from None

    return apply


CONSTRAINTS = {
    name.lower(): number
    for name, number in event_pb2.OomEvent.Constraint.items()
    if number != event_pb2.OomEvent.UNKNOWN
}
# The names records print (JSON's "source"), and two that stand for several.
SOURCES: dict[str, tuple[int, ...]] = {
    name.lower(): (number,) for name, number in event_pb2.OomEvent.Source.items()
}
# What the kernel killed: not a userspace killer, not a runtime ending itself.
SOURCES["kernel"] = tuple(
    n for k, n in event_pb2.OomEvent.Source.items() if k not in ("USERSPACE", "RUNTIME")
)
SOURCES["backfilled"] = (event_pb2.OomEvent.KMSG, event_pb2.OomEvent.COUNTER)


def _constraint(f: collector_pb2.EventFilter, value: str, _: When) -> None:
    try:
        f.constraint = CONSTRAINTS[value.lower()]
    except KeyError:
        raise FlagError(
            "--constraint", f"{value!r} is not one of {', '.join(CONSTRAINTS)} (any case)"
        ) from None


def _sources(f: collector_pb2.EventFilter, value: str, _: When) -> None:
    for name in value.lower().split(","):
        if name.strip() not in SOURCES:
            raise FlagError("--source", f"{name!r} is not one of {', '.join(SOURCES)}")
        for n in SOURCES[name.strip()]:
            if n not in f.sources:
                f.sources.append(n)  # type: ignore[arg-type]


def _workload(f: collector_pb2.EventFilter, value: str, _: When) -> None:
    parts = value.split("/")
    if len(parts) == 3 and all(parts):  # namespace/Kind/name, as top --by workload prints
        if f.namespace and f.namespace != parts[0]:
            raise FlagError("--workload", f"{value!r} is not in namespace {f.namespace}")
        f.namespace, f.workload = parts[0], "/".join(parts[1:])
    elif len(parts) == 2 and all(parts):
        f.workload = value
    else:
        raise FlagError(
            "--workload", f"{value!r} is not Kind/name (Deployment/shop) or namespace/Kind/name"
        )


# -- label selectors, as kubectl reads them ---------------------------------------------------

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_SET = re.compile(rf"\s*({_KEY})\s+(in|notin)\s+\(([^()]*)\)\s*")
_EQ = re.compile(rf"\s*({_KEY})\s*(==|=|!=)\s*({_VALUE})\s*")
_HAS = re.compile(rf"\s*(!?)\s*({_KEY})\s*")
_Op = collector_pb2.LabelRequirement


def _split_terms(selector: str) -> list[str]:
    terms, depth, cur = [], 0, ""
    for ch in selector:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            terms.append(cur)
            cur = ""
        else:
            cur += ch
    return [*terms, cur]


def parse_selector(selector: str) -> list[collector_pb2.LabelRequirement]:
    """kubectl's syntax: a=b, a==b, a!=b, a in (b,c), a notin (b), a, !a;
    comma-separated, all of them must hold. Raises ValueError."""
    out = []
    for term in _split_terms(selector):
        if m := _SET.fullmatch(term):
            values = [v.strip() for v in m.group(4).split(",")]
            if not all(re.fullmatch(_VALUE, v) for v in values) or not any(values):
                raise ValueError(f"{term.strip()!r}: bad values in ({m.group(4)})")
            op = _Op.IN if m.group(3) == "in" else _Op.NOT_IN
            out.append(_Op(key=m.group(1), operator=op, values=values))
        elif m := _EQ.fullmatch(term):
            op = _Op.NOT_IN if m.group(3) == "!=" else _Op.IN
            out.append(_Op(key=m.group(1), operator=op, values=[m.group(4)]))
        elif m := _HAS.fullmatch(term):
            op = _Op.DOES_NOT_EXIST if m.group(1) else _Op.EXISTS
            out.append(_Op(key=m.group(2), operator=op))
        else:
            raise ValueError(
                f"{term.strip()!r} is not a label requirement (app=shop, tier!=db, "
                "env in (a,b), !legacy)"
            )
    return out


def _selector(f: collector_pb2.EventFilter, value: str, _: When) -> None:
    try:
        f.labels.extend(parse_selector(value))
    except ValueError as exc:
        raise FlagError("-l/--selector", str(exc)) from None


def _verdict(f: collector_pb2.EventFilter, value: str, _: When) -> None:
    if not value.replace("_", "").isalnum():
        raise FlagError("--verdict", f"{value!r} is not a verdict code (TMPFS_MEMORY, ...)")
    f.verdict = value.upper()


def _namespace(f: collector_pb2.EventFilter, value: str, _: When) -> None:
    f.namespace = value


def _all_namespaces(f: collector_pb2.EventFilter, value: bool, _: When) -> None:
    pass  # every namespace is the default already; -A is there for kubectl's hands


FILTERS: tuple[FilterFlag, ...] = (
    FilterFlag(
        ("--since", "-S"),
        "since",
        f"from this time on ({times.EXAMPLES}); local time unless --utc or a zone is given",
        _time("since", "--since"),
    ),
    FilterFlag(
        ("--until", "-U"), "until", "up to this time (the same forms)", _time("until", "--until")
    ),
    FilterFlag(("--cluster",), "cluster", "only this cluster (exact match)", _text("cluster")),
    FilterFlag(("--node",), "node", "only this node (exact match)", _text("node")),
    FilterFlag(("-n", "--namespace"), "namespace", "only this Kubernetes namespace", _namespace),
    FilterFlag(
        ("-A", "--all-namespaces"),
        "all_namespaces",
        "every namespace (the default: records of every namespace are shown)",
        _all_namespaces,
        options={"action": "store_true"},
    ),
    FilterFlag(("--pod",), "pod", "only this pod (exact match)", _text("pod")),
    FilterFlag(
        ("--container",), "container", "only this container (exact match)", _text("container")
    ),
    FilterFlag(("--image",), "image", "only this image (exact match)", _text("image")),
    FilterFlag(
        ("--cgroup",), "cgroup", "only cgroups under this path prefix", _text("cgroup_prefix")
    ),
    FilterFlag(
        ("--comm",),
        "comm",
        "only victims with this comm (exact match)",
        _text("comm"),
        frozenset({KILLS}),
    ),
    FilterFlag(
        ("--constraint",),
        "constraint",
        f"only this kind of OOM, as KIND prints it ({', '.join(CONSTRAINTS)}; any case)",
        _constraint,
        frozenset({KILLS}),
        {"metavar": "KIND"},
        tuple(CONSTRAINTS),
    ),
    FilterFlag(
        ("--verdict",),
        "verdict",
        "only kills with this verdict code among theirs (TMPFS_MEMORY, KERNEL_MEMORY, ...; "
        "any case)",
        _verdict,
        frozenset({KILLS}),
        {"metavar": "CODE"},
    ),
    FilterFlag(
        ("--source",),
        "source",
        "only records from these sources, comma-separated: live (the BPF hooks), kmsg "
        "(recovered from the kernel log), counter (a kill counter alone), userspace "
        "(earlyoom, systemd-oomd...); kernel is live,kmsg,counter; backfilled is kmsg,counter",
        _sources,
        frozenset({KILLS}),
        {"metavar": "SOURCE,..."},
        tuple(SOURCES),
    ),
    FilterFlag(
        ("--workload",),
        "workload",
        "only pods owned by this Kind/name (Deployment/shop), or namespace/Kind/name as "
        "top --by workload prints it",
        _workload,
        frozenset({KILLS}),
        {"metavar": "KIND/NAME"},
    ),
    FilterFlag(
        ("-l", "--selector"),
        "selector",
        "only records whose labels match, in kubectl's syntax (app.kubernetes.io/name=shop,"
        "tier!=db); the labels a record holds are its container's, as the runtime keeps "
        "them (io.kubernetes.*, app.kubernetes.io/*)",
        _selector,
        frozenset({KILLS}),
        {"action": "append", "metavar": "SELECTOR"},
    ),
)


def add_arguments(p: argparse.ArgumentParser, *, command: str, default_since: str | None) -> None:
    g = p.add_argument_group("which records")
    ns = g.add_mutually_exclusive_group()
    for flag in FILTERS:
        if command not in flag.commands:
            continue
        options: dict[str, Any] = {"default": None, **flag.options}
        if flag.dest == "since" and default_since:
            options["default"] = default_since
        target = ns if flag.dest in ("namespace", "all_namespaces") else g
        action = target.add_argument(*flag.flags, dest=flag.dest, help=flag.help, **options)
        action.completions = flag.words  # type: ignore[attr-defined]
    g.add_argument(
        "--utc", action="store_true", help="read and print times in UTC, not the local zone"
    )


def build(args: argparse.Namespace, when: When) -> collector_pb2.EventFilter:
    """The request's filter from the parsed flags of any query command."""
    f = collector_pb2.EventFilter()
    for flag in FILTERS:
        value = getattr(args, flag.dest, None)
        if value in (None, "", False):
            continue
        for one in value if isinstance(value, list) else [value]:
            flag.apply(f, one, when)
    if (
        f.HasField("since")
        and f.HasField("until")
        and f.until.ToNanoseconds() <= f.since.ToNanoseconds()
    ):
        raise FlagError("--until", f"{args.until} is not after --since {args.since}")
    return f
