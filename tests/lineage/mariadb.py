"""A throw-away MariaDB server for the MySQL lineage tests (no Docker needed).

``server()`` uses a running server when ``TFXOPS_TEST_MYSQL_PORT`` names one
(with ``TFXOPS_TEST_MYSQL_ADMIN_USER``/``_PASSWORD``, an account that may create
databases and users); otherwise it installs Debian's ``mariadb-server`` when the
binaries are missing (root only, with a timeout), initializes a data directory in
a temporary directory, starts ``mariadbd`` on a free port in the background, and
stops it afterwards. Any step that fails raises ``Unavailable`` with the reason,
which the fixture turns into a visible skip.

MLMD's MySQL client (MariaDB Connector/C) authenticates with
mysql_native_password, so the users are created with that plugin.
"""
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Iterator, Optional

INSTALL_TIMEOUT = 900
START_TIMEOUT = 60


class Unavailable(RuntimeError):
    """No MySQL-compatible server could be found or started (the reason says why)."""


@dataclasses.dataclass
class Server:
    host: str
    port: int
    admin: list          # argv prefix of a client logged in as an administrator

    def sql(self, statement: str, timeout: float = 30) -> str:
        result = subprocess.run(self.admin + ["-N", "-B", "-e", statement], capture_output=True,
                                text=True, timeout=timeout)
        if result.returncode != 0:
            raise RuntimeError(f"SQL failed: {statement}: {result.stderr.strip()}")
        return result.stdout

    def create_database(self, database: str, user: str, password: str,
                        reader: Optional[str] = None, reader_password: str = "") -> None:
        """A database, a user with every right on it and, if asked, a SELECT-only user."""
        statements = [f"CREATE DATABASE IF NOT EXISTS `{database}`"]
        accounts = [(user, password, "ALL PRIVILEGES")]
        if reader:
            accounts.append((reader, reader_password, "SELECT"))
        for name, secret, rights in accounts:
            for host in ("%", "localhost", "127.0.0.1"):
                statements += [
                    f"CREATE USER IF NOT EXISTS '{name}'@'{host}' IDENTIFIED VIA mysql_native_password "
                    f"USING PASSWORD('{secret}')",
                    f"GRANT {rights} ON `{database}`.* TO '{name}'@'{host}'"]
        self.sql("; ".join(statements))


def _client() -> Optional[str]:
    return shutil.which("mariadb") or shutil.which("mysql")


def _daemon() -> Optional[str]:
    for name in ("mariadbd", "mysqld"):
        for directory in ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"):
            path = Path(directory) / name
            if path.is_file():
                return str(path)
        found = shutil.which(name)
        if found:
            return found
    return None


def _install_db() -> Optional[str]:
    return shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(host: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=1):
        return True
    return False


def ensure_installed() -> None:
    if _daemon() and _install_db() and _client():
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable("MariaDB is not installed and cannot be installed here "
                          "(needs root and apt-get): apt-get install mariadb-server")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    command = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "mariadb-server", "mariadb-client"]
    try:
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
        if result.returncode != 0:   # stale package lists: update once and retry
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, timeout=INSTALL_TIMEOUT)
            result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise Unavailable(f"`{' '.join(command)}` did not finish in {INSTALL_TIMEOUT} s")
    if result.returncode != 0 or not (_daemon() and _install_db() and _client()):
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise Unavailable(f"installing mariadb-server failed: {' / '.join(tail)}")


@contextlib.contextmanager
def _started(workdir: Path) -> Iterator[Server]:
    ensure_installed()
    datadir, sock = workdir / "data", workdir / "mysqld.sock"
    user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
    init = subprocess.run(
        [_install_db(), "--no-defaults", f"--datadir={datadir}", f"--user={user}",
         "--auth-root-authentication-method=socket", "--skip-test-db"],
        capture_output=True, text=True, timeout=120)
    if init.returncode != 0:
        raise Unavailable(f"mariadb-install-db failed: {init.stderr.strip()[-400:]}")
    port = _free_port()
    log = workdir / "error.log"
    process = subprocess.Popen(
        [_daemon(), "--no-defaults", f"--datadir={datadir}", f"--socket={sock}", f"--port={port}",
         "--bind-address=127.0.0.1", f"--user={user}", f"--pid-file={workdir / 'mysqld.pid'}",
         f"--log-error={log}", "--skip-log-bin", "--innodb-buffer-pool-size=32M",
         "--performance-schema=OFF", "--skip-name-resolve"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    server = Server("127.0.0.1", port, [_client(), "--no-defaults", f"--socket={sock}", "-uroot"])
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if process.poll() is not None:
                raise Unavailable(f"mariadbd exited with {process.returncode}: "
                                  f"{log.read_text()[-600:] if log.exists() else ''}")
            if _listening(server.host, port):
                with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                    server.sql("SELECT 1", timeout=5)
                    break
            if time.monotonic() > deadline:
                raise Unavailable(f"mariadbd did not accept connections within {START_TIMEOUT} s")
            time.sleep(0.3)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def server(workdir: Path) -> Iterator[Server]:
    """A MySQL-compatible server to create test databases on; see the module doc."""
    port = os.environ.get("TFXOPS_TEST_MYSQL_PORT")
    if port:
        host = os.environ.get("TFXOPS_TEST_MYSQL_HOST", "127.0.0.1")
        if not _listening(host, int(port)):
            raise Unavailable(f"TFXOPS_TEST_MYSQL_PORT={port}: nothing listens on {host}:{port}")
        if not _client():
            raise Unavailable("a MySQL server is configured but no mariadb/mysql client is installed")
        admin = [_client(), "--no-defaults", f"--host={host}", f"--port={port}", "--protocol=TCP",
                 f"--user={os.environ.get('TFXOPS_TEST_MYSQL_ADMIN_USER', 'root')}",
                 f"--password={os.environ.get('TFXOPS_TEST_MYSQL_ADMIN_PASSWORD', '')}"]
        yield Server(host, int(port), admin)
        return
    with _started(workdir) as started:
        yield started
