"""A real PostgreSQL server for the tests and the benchmark: Debian's
binaries, `initdb` and `pg_ctl` in a temporary directory of its own, on a
free port on loopback, stopped (by its own pid file) and removed after.

As root, the server runs as the `postgres` user (PostgreSQL refuses root).
Each test gets a database of its own (`database()`), dropped after."""

from __future__ import annotations

import contextlib
import os
import pwd
import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from tests.integration.harness import free_port


def _bin_dir() -> Path | None:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: p.parts[-3])
    return versions[-1].parent if versions else None


def skip_reason() -> str:
    if _bin_dir() is None:
        return "PostgreSQL's server is not installed (make setup installs Debian's postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "no postgres user to run the server as (Debian's postgresql makes one)"
    return ""


class PostgresServer:
    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            raise RuntimeError(skip_reason())
        self.bin = bin_dir
        # Under /tmp, not pytest's 0700 tree: the postgres user must reach it.
        self.dir = Path(tempfile.mkdtemp(prefix="oomtrace-pg-", dir="/tmp"))
        self.data = self.dir / "data"
        self.port = free_port()
        self.user = "oomtrace"
        self._as = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self._as:
            shutil.chown(self.dir, "postgres", "postgres")
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "--no-sync",
            "-E",
            "UTF8",
        )
        self.start()
        self.url = f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _run(self, tool: str, *args: str, env: dict[str, str] | None = None) -> str:
        p = subprocess.run(
            [*self._as, str(self.bin / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
        if p.returncode != 0:
            raise RuntimeError(f"{tool} {' '.join(args)}: {p.stdout}{p.stderr}")
        return p.stdout

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 "
            "-c fsync=off -c synchronous_commit=on -c max_connections=200"
        )
        self._run(
            "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.dir / "log"), "-w", "start"
        )

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop("fast")
        self.start()

    def sql(
        self, statement: str, dbname: str = "postgres", env: dict[str, str] | None = None
    ) -> str:
        return self._run(
            "psql",
            "-X",
            "-q",
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            self.user,
            "-d",
            dbname,
            "-v",
            "ON_ERROR_STOP=1",
            "-At",
            "-c",
            statement,
            env=env,
        )

    def read_only(self, on: bool) -> None:
        """The whole server read-only (as a full or read-only disk makes a
        database refuse writes), or writable again; sessions open now too."""
        value = "on" if on else "off"
        # The session that turns it off must itself be writable.
        writable = {"PGOPTIONS": "-c default_transaction_read_only=off"}
        self.sql(f"ALTER SYSTEM SET default_transaction_read_only = {value}", env=writable)
        self.sql("SELECT pg_reload_conf()", env=writable)
        time.sleep(0.3)  # each session takes the reload at its next command

    def database(self) -> str:
        """A new, empty database; its URL."""
        name = f"t_{secrets.token_hex(6)}"
        self.sql(f"CREATE DATABASE {name}")
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # not running
            self.stop("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> object:
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = PostgresServer()
    yield server
    server.close()
