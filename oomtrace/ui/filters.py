"""The kill list's URL parameters, as the collector's EventFilter. One line
of URL_FILTERS per filter: its parameter, the EventFilter field it sets,
and its label. A line whose field this build's EventFilter does not have
is left out of the form and ignored in URLs, so a filter the API gains
(source, verdict, workload, cluster...) is one line here, or none if its
line is already listed."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from google.protobuf.descriptor import FieldDescriptor

from oomtrace.cli import times
from oomtrace.v1 import collector_pb2


class FilterError(ValueError):
    """A URL parameter that cannot be a filter (a bad time, an unknown
    value); its message is shown on the page."""


@dataclass(frozen=True, slots=True)
class UrlFilter:
    param: str
    field: str
    label: str


URL_FILTERS = (
    UrlFilter("namespace", "namespace", "namespace"),
    UrlFilter("pod", "pod", "pod"),
    UrlFilter("container", "container", "container"),
    UrlFilter("image", "image", "image"),
    UrlFilter("workload", "workload", "workload"),
    UrlFilter("node", "node", "node"),
    UrlFilter("cluster", "cluster", "cluster"),
    UrlFilter("source", "source", "source"),
    UrlFilter("verdict", "verdict", "verdict"),
    UrlFilter("comm", "comm", "comm"),
    UrlFilter("constraint", "constraint", "kind"),
    UrlFilter("cgroup", "cgroup_prefix", "cgroup prefix"),
)
TIME_PARAMS = ("since", "until")
_FIELDS = collector_pb2.EventFilter.DESCRIPTOR.fields_by_name


def active(kills: bool = True) -> tuple[UrlFilter, ...]:
    """The filters this build's API has (pressure records: no comm, no kind)."""
    return tuple(
        f
        for f in URL_FILTERS
        if f.field in _FIELDS and (kills or f.param not in ("comm", "constraint"))
    )


def _repeated(fd: FieldDescriptor) -> bool:
    # protobuf 6 has is_repeated; label went away with upb's descriptors.
    is_repeated = getattr(fd, "is_repeated", None)
    if is_repeated is not None:
        return bool(is_repeated)
    return bool(getattr(fd, "label", 0) == FieldDescriptor.LABEL_REPEATED)


def _set(msg: collector_pb2.EventFilter, field: str, value: str) -> None:
    fd = _FIELDS[field]
    if fd.type == FieldDescriptor.TYPE_ENUM and fd.enum_type is not None:
        ev = fd.enum_type.values_by_name.get(value.upper())
        if ev is None or ev.number == 0:
            names = ", ".join(v.name.lower() for v in fd.enum_type.values if v.number)
            raise FilterError(f"{value!r} is not a {field} ({names})")
        number = ev.number
        if _repeated(fd):
            getattr(msg, field).append(number)
        else:
            setattr(msg, field, number)
    elif _repeated(fd):
        getattr(msg, field).append(value)
    elif fd.type == FieldDescriptor.TYPE_STRING:
        setattr(msg, field, value)
    else:
        raise FilterError(f"the {field} filter is not supported by this ui")


def build(
    params: Mapping[str, str], *, kills: bool = True, now: float | None = None
) -> collector_pb2.EventFilter:
    """The EventFilter of a page's URL parameters; the time range read as
    `history` reads --since/--until (7d, 2026-11-27T09:00:00Z)."""
    now = time.time() if now is None else now
    f = collector_pb2.EventFilter()
    for uf in active(kills):
        value = params.get(uf.param, "").strip()
        if value:
            _set(f, uf.field, value)
    # The CLI's own reading of times (journalctl's forms; local time unless
    # a zone is given), so a time pasted from a page or a terminal agrees.
    try:
        if params.get("since", "").strip():
            f.since.FromDatetime(times.parse(params["since"], now=now, tz=None))
        if params.get("until", "").strip():
            f.until.FromDatetime(times.parse(params["until"], now=now, tz=None))
    except times.TimeError as exc:
        raise FilterError(str(exc)) from None
    if (
        f.HasField("since")
        and f.HasField("until")
        and f.until.ToNanoseconds() <= f.since.ToNanoseconds()
    ):
        raise FilterError("until is not after since")
    return f


def query_string(params: Mapping[str, str], **changes: str) -> str:
    """The page's filters (and the time range) as a URL query, with changes."""
    keep = {uf.param for uf in URL_FILTERS} | set(TIME_PARAMS) | {"by", "limit"}
    out = {k: v for k, v in params.items() if k in keep and v}
    out.update({k: v for k, v in changes.items()})
    return urlencode({k: v for k, v in out.items() if v})
