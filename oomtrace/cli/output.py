"""`-o`: every way a listing command prints, in one place.

FORMATS is the one place to add an output format: its name, whether it
takes `=ARG`, and its help. The table formats (table, wide) are each
command's own columns (render.py); the others work on the plain form of
any record, so a new command gets them for nothing:

- json: one object a line (JSON Lines), as `watch` streams them; integers
  are JSON numbers, not protobuf's strings (see plain());
- yaml: one document (a list for a listing); multi-line strings as block
  scalars; watch: one document per record, `---` between;
- jsonpath=TEMPLATE: kubectl's template over {"items": [...]} for a
  listing, over each record for watch and show;
- custom-columns=NAME:.path,...: a table of the paths asked for."""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import yaml
from google.protobuf import descriptor, json_format
from google.protobuf.message import Message

# name -> (takes =ARG, help)
FORMATS: dict[str, tuple[bool, str]] = {
    "table": (False, "columns for people"),
    "wide": (False, "more columns"),
    "json": (False, "one JSON object a line"),
    "yaml": (False, "one YAML document"),
    "jsonpath": (True, "jsonpath=TEMPLATE, as kubectl: -o jsonpath='{.items[*].id}'"),
    "custom-columns": (True, "custom-columns=ID:.id,POD:.pod.name"),
}


@dataclass(frozen=True, slots=True)
class Output:
    """How a command prints: -o, --no-headers."""

    format: str = "table"
    arg: str = ""
    no_headers: bool = False
    columns: tuple[tuple[str, str], ...] = field(default=())

    @property
    def is_table(self) -> bool:
        return self.format in ("table", "wide")

    @property
    def wide(self) -> bool:
        return self.format == "wide"


# Formats of one command alone, printed by that command itself (not by
# print_list/print_one): show's post-mortem page.
OWN_FORMATS: dict[str, tuple[bool, str]] = {
    "html": (False, "the post-mortem page as one self-contained file, for a ticket"),
}


def parse_format(text: str, own: Sequence[str] = ()) -> Output:
    """An argparse type for -o: NAME or NAME=ARG; `own`: the command's own
    formats from OWN_FORMATS it takes too."""
    name, eq, arg = text.partition("=")
    if name in own:
        if eq:
            raise argparse.ArgumentTypeError(f"{name} takes no argument")
        return Output(name)
    if name not in FORMATS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an output format: one of "
            + ", ".join([*(f"{n}=..." if FORMATS[n][0] else n for n in FORMATS), *own])
        )
    takes_arg = FORMATS[name][0]
    if takes_arg and not arg:
        raise argparse.ArgumentTypeError(f"{name} needs its argument: -o {name}=...")
    if not takes_arg and eq:
        raise argparse.ArgumentTypeError(f"{name} takes no argument")
    columns: tuple[tuple[str, str], ...] = ()
    if name == "custom-columns":
        cols = []
        for spec in arg.split(","):
            head, colon, path = spec.partition(":")
            if not colon or not head or not path:
                raise argparse.ArgumentTypeError(
                    f"custom-columns: {spec!r} is not NAME:.path (e.g. ID:.id)"
                )
            cols.append((head, _check_path(path.strip("{}"))))
        columns = tuple(cols)
    elif name == "jsonpath":
        _compile(arg)
    return Output(name, arg, columns=columns)


def add_arguments(
    p: argparse.ArgumentParser, formats: Sequence[str] = tuple(FORMATS), own: Sequence[str] = ()
) -> None:
    """-o/--output, --json (its old spelling) and --no-headers; `own`: the
    command's own formats (OWN_FORMATS)."""
    known = {**FORMATS, **OWN_FORMATS}
    p.add_argument(
        "-o",
        "--output",
        type=functools.partial(parse_format, own=tuple(own)),
        default=Output(),
        metavar="FORMAT",
        help="; ".join(f"{n}: {known[n][1]}" for n in (*formats, *own)) + " (default: table)",
    )
    p.add_argument("--json", action="store_true", help="the same as -o json")
    p.add_argument("--no-headers", action="store_true", help="tables without their heading line")


def from_args(args: argparse.Namespace) -> Output:
    out: Output = args.output
    if args.json:
        out = Output("json")
    if args.no_headers:
        out = Output(out.format, out.arg, True, out.columns)
    return out


# -- plain form of a record ----------------------------------------------------------------

_INT64 = frozenset(
    {
        descriptor.FieldDescriptor.TYPE_INT64,
        descriptor.FieldDescriptor.TYPE_UINT64,
        descriptor.FieldDescriptor.TYPE_SINT64,
        descriptor.FieldDescriptor.TYPE_FIXED64,
        descriptor.FieldDescriptor.TYPE_SFIXED64,
    }
)


def plain(msg: Message) -> dict[str, Any]:
    """A record as JSON-ready dicts, with the proto field names and every
    field shown. protobuf's JSON mapping writes 64-bit integers as strings
    (for JavaScript, whose numbers hold 2^53 exactly); here they are numbers,
    written with all their digits whatever their size, as kubectl writes
    int64: Python, jq 1.7 and Go read them exactly, and none of a record's
    counters or byte figures comes near 2^53 (8 PiB) in practice."""
    d = json_format.MessageToDict(
        msg, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    _numbers(msg.DESCRIPTOR, d)
    return d


def _numbers(desc: Any, d: dict[str, Any]) -> None:
    for f in desc.fields:
        if f.name not in d:
            continue
        v = d[f.name]
        repeated = f.is_repeated
        mt = f.message_type
        if mt is not None:
            if mt.full_name.startswith("google.protobuf."):
                continue  # Timestamp and friends keep their JSON form
            if mt.GetOptions().map_entry:
                vf = mt.fields_by_name["value"]
                if vf.type in _INT64:
                    d[f.name] = {k: int(x) for k, x in v.items()}
                elif vf.message_type is not None:
                    for x in v.values():
                        _numbers(vf.message_type, x)
            elif repeated:
                for x in v:
                    _numbers(mt, x)
            else:
                _numbers(mt, v)
        elif f.type in _INT64:
            d[f.name] = [int(x) for x in v] if repeated else int(v)


class _Dumper(yaml.SafeDumper):
    pass


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.ScalarNode:
    # Multi-line text (a command line, a verdict) as a `|` block; PyYAML
    # falls back to a quoted string when the text cannot be a block.
    style = "|" if "\n" in text else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)


_Dumper.add_representer(str, _str)


def to_yaml(value: Any) -> str:
    # width: no folding of long strings (folding is what put blank lines
    # inside quoted multi-line strings).
    text: str = yaml.dump(
        value, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=float("inf")
    )
    return text


# -- jsonpath ---------------------------------------------------------------------------------

_TOKEN = re.compile(r"\{((?:[^{}\"]|\"(?:[^\"\\]|\\.)*\")*)\}")
_STEP = re.compile(r"\.([A-Za-z0-9_-]+)|\[(\*|-?\d+)\]|\.\*|\.\.")


def _check_path(path: str) -> str:
    p = path.strip()
    if p in ("@", "."):
        return p
    if not p.startswith(".") or _STEP.sub("", p):
        raise argparse.ArgumentTypeError(f"{path!r} is not a path like .id or .verdicts[0].code")
    return p


def _compile(template: str) -> list[tuple[str, str]]:
    """(kind, text) parts: text, path, literal, range, end."""
    parts: list[tuple[str, str]] = []
    pos = 0
    depth = 0
    for m in _TOKEN.finditer(template):
        if m.start() > pos:
            parts.append(("text", template[pos : m.start()]))
        expr = m.group(1).strip()
        if expr.startswith('"'):
            try:
                parts.append(("literal", str(json.loads(expr, strict=False))))
            except ValueError:
                raise argparse.ArgumentTypeError(f"jsonpath: {expr} is not a string") from None
        elif expr.startswith("range "):
            depth += 1
            parts.append(("range", _check_path(expr[6:])))
        elif expr == "end":
            depth -= 1
            parts.append(("end", ""))
        else:
            parts.append(("path", _check_path(expr)))
        pos = m.end()
    if "{" in template[pos:] or "}" in template[pos:]:
        raise argparse.ArgumentTypeError(f"jsonpath: unclosed brace in {template!r}")
    if depth:
        raise argparse.ArgumentTypeError("jsonpath: each {range ...} needs its {end}")
    parts.append(("text", template[pos:]))
    return parts


def select(value: Any, path: str) -> list[Any]:
    """What a path finds, kubectl-style: a missing field finds nothing."""
    found = [value]
    if path in ("@", "."):
        return found
    for m in _STEP.finditer(path):
        name, index = m.group(1), m.group(2)
        nxt: list[Any] = []
        for v in found:
            if name is not None:
                if isinstance(v, dict) and name in v:
                    nxt.append(v[name])
            elif index == "*" or m.group(0) == ".*":
                nxt += list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else []
            elif index is not None:
                if isinstance(v, list) and -len(v) <= int(index) < len(v):
                    nxt.append(v[int(index)])
            else:  # ..: everything below
                nxt += _descend(v)
        found = nxt
    return found


def _descend(v: Any) -> list[Any]:
    out = [v]
    for child in v.values() if isinstance(v, dict) else v if isinstance(v, list) else []:
        out += _descend(child)
    return out


def _text(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return json.dumps(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def jsonpath(template: str, value: Any) -> str:
    parts = _compile(template)
    out: list[str] = []

    def run(i: int, cur: Any) -> int:
        while i < len(parts):
            kind, text = parts[i]
            if kind in ("text", "literal"):
                out.append(text)
            elif kind == "path":
                out.append(" ".join(_text(x) for x in select(cur, text)))
            elif kind == "range":
                items = select(cur, text)
                end = i + 1
                for item in items:
                    end = run(i + 1, item)
                if not items:
                    end = _skip(i + 1)
                i = end
            elif kind == "end":
                return i
            i += 1
        return i

    def _skip(i: int) -> int:
        depth = 0
        while i < len(parts):
            if parts[i][0] == "range":
                depth += 1
            elif parts[i][0] == "end":
                if depth == 0:
                    return i
                depth -= 1
            i += 1
        return i

    run(0, value)
    return "".join(out)


# -- printing -----------------------------------------------------------------------------------


def _columns_table(out: Output, dicts: Iterable[dict[str, Any]], headers: bool) -> str:
    rows = [
        [",".join(_text(x) for x in select(d, p)) or "<none>" for _, p in out.columns]
        for d in dicts
    ]
    heads = [h for h, _ in out.columns]
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(heads)]
    lines = [heads] if headers else []
    lines += rows
    return "\n".join(
        "   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in lines
    )


def write(text: str, w: TextIO | None = None) -> None:
    """text in pieces: one large write into a pipe whose reader is gone
    can end in a short write that Python 3.11's text layer takes for a
    whole one (seen with `-o yaml | head -n 1`: 64 KiB written, the rest
    dropped, no error); pieces make the closed pipe an error, as it is."""
    w = w or sys.stdout
    for i in range(0, len(text), 8192):
        w.write(text[i : i + 8192])


def strip_heading(table: str, out: Output) -> str:
    return table.split("\n", 1)[1] if out.no_headers and "\n" in table else table


def print_list(
    items: Sequence[Message],
    out: Output,
    table: Callable[[bool], str],
    *,
    nothing: str,
    stream: TextIO | None = None,
) -> None:
    """A listing in any format; table(wide) renders this command's columns.
    An empty table says `nothing` on stderr (as kubectl's "No resources
    found"), so a pipe gets no stray line."""
    w = stream or sys.stdout
    if out.is_table:
        if not items:
            print(nothing, file=sys.stderr)
            return
        write(strip_heading(table(out.wide), out) + "\n", w)
    elif out.format == "json":
        for m in items:
            print(json.dumps(plain(m), ensure_ascii=False), file=w)
    elif out.format == "yaml":
        write(to_yaml([plain(m) for m in items]), w)
    elif out.format == "jsonpath":
        write(jsonpath(out.arg, {"items": [plain(m) for m in items]}) + "\n", w)
    elif out.format == "custom-columns":
        write(_columns_table(out, (plain(m) for m in items), not out.no_headers) + "\n", w)
    else:  # a format added to FORMATS but not here
        raise AssertionError(f"output format {out.format} has no printer")


def print_one(msg: Message, out: Output, text: Callable[[bool], str], *, first: bool) -> None:
    """One record of a stream (watch), or the one record of show: text(wide)
    is the table formats' line; first: the first of a stream (custom-columns
    print their heading then)."""
    if out.is_table:
        write(text(out.wide) + "\n")
    elif out.format == "json":
        write(json.dumps(plain(msg), ensure_ascii=False) + "\n")
    elif out.format == "yaml":
        write(("" if first else "---\n") + to_yaml(plain(msg)))
    elif out.format == "jsonpath":
        write(jsonpath(out.arg, plain(msg)) + "\n")
    elif out.format == "custom-columns":
        write(_columns_table(out, [plain(msg)], first and not out.no_headers) + "\n")
    else:
        raise AssertionError(f"output format {out.format} has no printer")
    sys.stdout.flush()
