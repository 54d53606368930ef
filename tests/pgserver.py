"""A throwaway PostgreSQL server for the tests, when none answers at ``HPO_TEST_PG``.

It runs Debian's (or any) ``initdb`` / ``pg_ctl`` from ``$HPO_TEST_PG_BINDIR``, else ``PATH``, else
``/usr/lib/postgresql/*/bin`` (newest first), in a temporary folder, listening on 127.0.0.1 at a
free port with trust authentication, and is deleted when the test session ends. PostgreSQL refuses
to run as root: as root it runs as the ``postgres`` user (Debian's package makes one).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HOW = (
    "install PostgreSQL's server binaries (Debian: apt-get install postgresql) or point "
    "HPO_TEST_PG at a server (postgresql://USER@HOST:PORT/DB)"
)


@dataclass
class Server:
    """A running throwaway server: its admin URL, and how to stop it."""

    url: str
    root: Path  # the temporary folder: the cluster in root/db, its socket and log beside it
    pg_ctl: str
    user: str | None

    def stop(self) -> None:
        if (self.root / "db" / "postmaster.pid").exists():
            stop = [self.pg_ctl, "-D", str(self.root / "db"), "-m", "immediate", "-w", "stop"]
            _run(self.user, stop, check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def bindir() -> Path | None:
    """The folder holding ``initdb`` and ``pg_ctl``, if this machine has them."""
    if os.environ.get("HPO_TEST_PG_BINDIR"):
        candidates = [os.environ["HPO_TEST_PG_BINDIR"]]
    else:
        on_path = shutil.which("pg_ctl")
        candidates = [str(Path(on_path).resolve().parent)] if on_path else []
        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=_version, reverse=True)
    for folder in candidates:
        if all(os.access(Path(folder) / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return Path(folder)
    return None


def start() -> tuple[Server | None, str]:
    """(the started server, "") or (None, one line saying why not and how to enable the tests)."""
    folder = bindir()
    if folder is None:
        return None, f"no PostgreSQL server binaries (initdb, pg_ctl) found; {HOW}"
    user = None
    if os.geteuid() == 0:  # postgres will not run as root
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            return None, f"running as root and there is no 'postgres' user to run the server as; {HOW}"
        user = account.pw_name
    data = Path(tempfile.mkdtemp(prefix="hpo-test-pg-"))
    if user is not None:
        os.chown(data, account.pw_uid, account.pw_gid)
    port = _free_port()
    server = Server(f"postgresql://postgres@127.0.0.1:{port}/postgres", data, str(folder / "pg_ctl"), user)
    init = [str(folder / "initdb"), "-D", str(data / "db"), "-U", "postgres", "--auth=trust", "-E", "UTF8"]
    options = f"-h 127.0.0.1 -p {port} -k {data} -c fsync=off -c full_page_writes=off"
    start_cmd = [server.pg_ctl, "-D", str(data / "db"), "-o", options, "-l", str(data / "log"), "-w", "start"]
    for cmd in (init, start_cmd):
        r = _run(user, cmd, check=False)
        if r.returncode != 0:
            server.stop()
            return None, f"could not start a throwaway PostgreSQL ({' '.join(cmd[:1])}: {_last(r)}); {HOW}"
    return server, ""


def _run(user: str | None, cmd: list[str], check: bool) -> subprocess.CompletedProcess:
    if user is not None:
        cmd = ["runuser", "-u", user, "--", *cmd]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=120)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _version(folder: str) -> float:
    try:
        return float(Path(folder).parent.name)
    except ValueError:
        return 0.0


def _last(r: subprocess.CompletedProcess) -> str:
    lines = (r.stderr or r.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit {r.returncode}"
