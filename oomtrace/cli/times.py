"""Times as journalctl reads them, in the local zone unless told otherwise.

`now`, `today`, `yesterday`, `tomorrow`; `-1h`, `+30m`, `1h ago`, and a bare
`1h` (ago, as before); `2026-12-04`, `2026-12-04 14:29:50`, `14:29` (today),
ISO 8601 with `T`; a zone when one is written (`Z`, `+01:00`, ` UTC`, or the
local zone's abbreviation as the tables print it, so a printed time pasted
back reads the same). A time without a zone is local, or UTC with --utc."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, tzinfo

_UNITS = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "seconds": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "minutes": 60,
    "h": 3600,
    "hour": 3600,
    "hours": 3600,
    "d": 86400,
    "day": 86400,
    "days": 86400,
    "w": 7 * 86400,
    "week": 7 * 86400,
    "weeks": 7 * 86400,
}
_PART = re.compile(r"(\d+)\s*([a-z]+)")
_DAYS = {"today": 0, "yesterday": -1, "tomorrow": 1}
_FORMATS = ("%Y-%m-%d %H:%M:%S.%f", "%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")
EXAMPLES = "now, today, yesterday, -1h, 30m, '2026-12-04 14:29:50', 2026-12-04T14:29:50Z"


class TimeError(ValueError):
    """Text that is not a time; the message says what is."""


def zone(utc: bool) -> tzinfo | None:
    """The zone times are read and printed in: UTC, or None for the local
    one (TZ), whose offset is each moment's own (summer time or not)."""
    return UTC if utc else None


def duration_s(text: str) -> int:
    """Seconds in `90m`, `1h30m`, `2 days`, `45s`; raises TimeError."""
    s = text.strip().lower()
    parts = _PART.findall(s)
    if not parts or _PART.sub("", s).strip():
        raise TimeError(f"{text!r} is not a duration like 30m, 1h or 7d")
    total = 0
    for n, unit in parts:
        if unit not in _UNITS:
            raise TimeError(f"{text!r}: {unit!r} is not a unit (s, m, h, d, w)")
        total += int(n) * _UNITS[unit]
    return total


def _named_zone(text: str, tz: tzinfo | None) -> tuple[str, tzinfo | None]:
    """A trailing zone name: UTC/GMT/Z, or the local zone's abbreviations."""
    head, _, last = text.rpartition(" ")
    if head and last.upper() in ("UTC", "GMT"):
        return head, UTC
    if head and last in time.tzname:
        return head, None
    return text, tz


def parse(text: str, *, now: float, tz: tzinfo | None) -> datetime:
    """An aware datetime; raises TimeError naming what is understood."""
    s = text.strip()
    low = s.lower()
    here = datetime.fromtimestamp(now, tz).astimezone(tz)
    if low == "now":
        return here
    if low in _DAYS:
        # Midnight of a calendar day in the zone (a DST change makes a day 23 or 25 h).
        day = here.replace(tzinfo=None, hour=0, minute=0, second=0, microsecond=0)
        return _settle(day + timedelta(days=_DAYS[low]), tz)
    rel = s
    sign = -1
    if rel[:1] in "+-" and rel[1:2].isdigit():
        sign = 1 if rel[0] == "+" else -1
        rel = rel[1:]
    elif low.endswith(" ago"):
        rel = rel[:-4]
    if rel[:1].isdigit() and not re.match(r"\d{4}-|\d{1,2}:", rel):
        return datetime.fromtimestamp(now + sign * duration_s(rel), tz).astimezone(tz)
    body, tz_in = _named_zone(s, tz)
    iso = body.replace("Z", "+00:00") if body.endswith("Z") else body
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        dt = None
    if dt is None:
        m = re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", body)
        if not m:
            raise TimeError(f"{text!r} is not a time or duration ({EXAMPLES})")
        dt = here.astimezone(tz_in).replace(
            hour=int(m[1]), minute=int(m[2]), second=int(m[3] or 0), microsecond=0, tzinfo=None
        )
    if dt.tzinfo is None:
        return _settle(dt, tz_in)
    return dt


def _settle(naive: datetime, tz: tzinfo | None) -> datetime:
    """A wall-clock time in tz; in the local zone (None) through the C
    library, so a date on the other side of a DST change gets that side's
    offset."""
    if tz is not None:
        return naive.replace(tzinfo=tz)
    stamp = time.mktime((*naive.timetuple()[:8], -1))
    return datetime.fromtimestamp(stamp + naive.microsecond / 1e6).astimezone()
