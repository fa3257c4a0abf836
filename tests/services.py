"""Real services for tests: memcached, Redis (with Sentinel) and the app itself, started on free
ports and stopped after.

Each store's service also says how a store reaches it (``store_options``) and how someone else
with access to it would write a raw value under a session's key (``write_raw``): what the
store conformance suite needs to run against it.

A service whose binary is missing makes its tests skip with a reason naming it, except under
``CI=true``, where it is a failure.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import free_port as free_port  # one record of the ports handed out, for tests and benchmark alike
from stores.users import DEMO_USERS_FILE

ROOT = Path(__file__).resolve().parent.parent


def require_binary(name: str) -> str:
    """The path of ``name``; skip the test if it is missing (fail under CI=true)."""
    path = shutil.which(name) or next(
        (p for p in (f"/usr/bin/{name}", f"/usr/sbin/{name}") if os.access(p, os.X_OK)), None
    )
    if path is None:
        message = f"{name} is not installed (make test installs it with apt-get when run as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on port {port}") from None
            time.sleep(0.05)


class ServerProcess:
    """A server process on a loopback port that a test can pause, resume and stop."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """End the server: SIGKILL (a crash) by default, SIGTERM for a clean shutdown."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a paused server must see the signal
            self.process.send_signal(sig)
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        """Stop the process where it is (SIGSTOP): its port stays open and answers nothing."""
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)
        # The signal is delivered asynchronously: until every thread has stopped, the server may
        # still answer what a test sends next. Wait for the kernel to report them stopped.
        deadline = time.monotonic() + 5
        while not all(state == "T" for state in self._thread_states()):
            if time.monotonic() > deadline:
                raise RuntimeError("the process did not stop")
            time.sleep(0.001)

    def _thread_states(self) -> list[str]:
        """The scheduler state of each of the process's threads (R, S, T for stopped...)."""
        assert self.process is not None
        states = []
        for task in Path(f"/proc/{self.process.pid}/task").iterdir():
            with contextlib.suppress(OSError):
                # /proc/<pid>/task/<tid>/stat: "tid (comm) state ..."; comm may hold spaces.
                states.append((task / "stat").read_text().rsplit(")", 1)[1].split()[0])
        return states

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class Memcached(ServerProcess):
    """A memcached process on a free loopback port."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        self.binary = require_binary("memcached")
        self.port = port or free_port()
        self.extra_args = extra_args

    def start(self) -> Memcached:
        args = [self.binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64", "-t", "2"]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        self.process = subprocess.Popen([*args, *self.extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port)
        return self

    def _exchange(self, request: bytes, reply_end: bytes) -> bytes:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(request)
            data = b""
            while not data.endswith(reply_end):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
            return data

    def command(self, line: bytes) -> bytes:
        """Send one raw protocol command and return its one-line reply (mg without v, set, delete)."""
        return self._exchange(line + b"\r\n", b"\r\n").strip()

    def ttl(self, key: str) -> int | None:
        """Seconds left before ``key`` expires (-1: never), or None if it is not there."""
        reply = self.command(b"mg " + key.encode() + b" t")
        if not reply.startswith(b"HD"):
            return None
        return int(reply.split()[1][1:])

    def set_raw(self, key: str, value: bytes, exptime: int = 0) -> None:
        reply = self.command(b"set %s 0 %d %d\r\n%s" % (key.encode(), exptime, len(value), value))
        assert reply == b"STORED", reply

    def stored_keys(self) -> list[str]:
        """Every key stored now (via lru_crawler metadump of the hash table: a walk of the LRUs
        can miss an item memcached moves between them meanwhile, one just read, say)."""
        data = self._exchange(b"lru_crawler metadump hash\r\n", b"END\r\n")
        keys = []
        for line in data.decode().splitlines():
            if line.startswith("key="):
                keys.append(urllib.parse.unquote(line.split()[0][4:]))
        return keys

    def store_options(self) -> dict[str, str]:
        return {"servers": self.address, "timeout": "0.3", "connect_timeout": "0.3", "probe_interval": "0.2"}

    def write_raw(self, key: str, value: bytes) -> None:
        self.set_raw(key, value, 60)

    def __enter__(self) -> Memcached:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Redis(ServerProcess):
    """A redis-server process on a free loopback port, its files in a directory of its own.

    ``appendfsync``: None keeps no append-only file (a cache, like memcached); "everysec" or
    "always" turns it on, as docs/STORES.md configures a durable store.
    """

    def __init__(
        self, *extra_args: str, port: int | None = None, appendfsync: str | None = None, unix_socket: bool = False
    ) -> None:
        self.binary = require_binary("redis-server")
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.dir = Path(tempfile.mkdtemp(prefix=f"redis-{self.port}-"))
        # With unix_socket, it also listens on a socket in its directory (only its owner may connect).
        self.socket_path = self.dir / "redis.sock"
        unix = ("--unixsocket", str(self.socket_path), "--unixsocketperm", "700") if unix_socket else ()
        self.extra_args = (*extra_args, *unix)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> Redis:
        durable = ["--appendonly", "yes", "--appendfsync", self.appendfsync] if self.appendfsync else []
        args = [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir), "--save", ""]
        self.process = subprocess.Popen(
            [*args, *durable, *self.extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        deadline = time.monotonic() + 10
        while True:  # the port opens before an append-only file is loaded
            try:
                if self.command("PING") == "PONG":
                    return self
            except RuntimeError as e:  # "-NOAUTH": up, and asking for a user and password
                if "NOAUTH" in str(e):
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"redis on port {self.port} does not answer")
            time.sleep(0.05)

    def command(self, *args: str | bytes | int) -> Any:
        """One command over RESP on a fresh connection; its reply decoded (bytes as text)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            parts = [a if isinstance(a, bytes) else str(a).encode() for a in args]
            sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
            return _RespReader(sock).reply()

    def store_options(self) -> dict[str, str]:
        return {"url": self.url, "timeout": "0.3", "connect_timeout": "0.3"}

    def ttl(self, key: str) -> int | None:
        """Seconds left before ``key`` expires (-1: never), or None if it is not there."""
        seconds: int = self.command("TTL", key)
        return None if seconds == -2 else seconds

    def stored_keys(self) -> list[str]:
        return [key.decode() for key in self.command("KEYS", "*")]

    def write_raw(self, key: str, value: bytes) -> None:
        """What someone with write access could leave under a session's key: any value, a
        version the store has never written."""
        self.command("HSET", key, "v", "7", "r", value)

    def __enter__(self) -> Redis:
        try:
            return self.start()
        except BaseException:
            self.__exit__()  # a server that never answered is not left running
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class _RespReader:
    """Replies of the Redis protocol (RESP2), for tests that look at the server directly."""

    def __init__(self, sock: socket.socket) -> None:
        self.file = sock.makefile("rb")

    def reply(self) -> Any:
        line = self.file.readline().rstrip(b"\r\n")
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            size = int(rest)
            if size < 0:
                return None
            data: bytes = self.file.read(size + 2)[:-2]
            return data
        if kind == b"*":
            size = int(rest)
            return None if size < 0 else [self.reply() for _ in range(size)]
        raise RuntimeError(f"unexpected reply {line[:40]!r}")


class RedisSentinel(ServerProcess):
    """A Redis Sentinel on a free loopback port, monitoring ``primary`` as ``service``.

    It marks the primary down after ``down_after_ms`` without an answer, and (a quorum of one)
    promotes a replica. With ``password`` it asks its clients for it (``requirepass``), or with
    ``username`` too for that ACL user's (the default user off). With ``tls`` (lines of
    sentinel.conf: its certificate, key and CA) it watches the primary on ``primary_port``, a
    TLS port, over TLS.
    """

    def __init__(
        self,
        primary: Redis,
        service: str = "sessions",
        down_after_ms: int = 1000,
        password: str | None = None,
        username: str | None = None,
        tls: str = "",
        primary_port: int | None = None,
    ) -> None:
        self.binary = require_binary("redis-server")
        self.port = free_port()
        self.service = service
        self.password = password
        self.username = username
        if username:
            access = f"user default off\nuser {username} on >{password} +@all\n"
        else:
            access = f"requirepass {password}\n" if password else ""
        self.dir = Path(tempfile.mkdtemp(prefix=f"sentinel-{self.port}-"))
        (self.dir / "sentinel.conf").write_text(
            f"bind 127.0.0.1\nport {self.port}\ndir {self.dir}\n"
            f"sentinel monitor {service} 127.0.0.1 {primary_port or primary.port} 1\n"
            f"sentinel down-after-milliseconds {service} {down_after_ms}\n"
            f"sentinel failover-timeout {service} 10000\n" + access + tls
        )

    def start(self) -> RedisSentinel:
        self.process = subprocess.Popen(
            [self.binary, str(self.dir / "sentinel.conf"), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def _command(self, *args: str) -> Any:
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            commands: list[tuple[str, ...]] = [args]
            if self.password:
                credentials = (self.username, self.password) if self.username else (self.password,)
                commands.insert(0, ("AUTH", *credentials))
            reader = _RespReader(sock)
            for command in commands:
                parts = [a.encode() for a in command]
                sock.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
                reply = reader.reply()
            return reply

    def primary_port(self) -> int:
        return int(self._command("SENTINEL", "get-master-addr-by-name", self.service)[1])

    def replicas(self) -> list[Any]:
        replies: list[Any] = self._command("SENTINEL", "replicas", self.service)
        return replies

    def stop(self, sig: int = signal.SIGKILL) -> None:
        super().stop(sig)
        shutil.rmtree(self.dir, ignore_errors=True)


class AppProcess:
    """``server.py`` in a subprocess on a free port, with the given environment variables.

    Its output goes to a file, so a test can read the log while the process runs.
    """

    def __init__(
        self,
        env: dict[str, str],
        args: tuple[str, ...] = ("--env=test",),
        port: int | None = None,
        preexec_fn: Callable[[], None] | None = None,
        script: Path = ROOT / "server.py",
        cwd: Path = ROOT,
    ) -> None:
        self.port = port or free_port()
        # What a user runs: server.py, or a script of their own that calls its main().
        self.script = script
        self.cwd = cwd
        self.env = {**os.environ, **env}
        self.args = args
        # Run in the child before server.py starts (resource limits, say).
        self.preexec_fn = preexec_fn
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkstemp(prefix=f"app-{self.port}-", suffix=".log")[1])
        self.returncode: int | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, *needles: str, timeout: float = 5.0) -> str:
        """The log once it holds every one of ``needles`` (lines are flushed every 0.25 s)."""
        deadline = time.monotonic() + timeout
        while not all(n in (text := self.output) for n in needles):
            if time.monotonic() > deadline:
                raise AssertionError(f"log of port {self.port} lacks {needles}:\n{text[-2000:]}")
            time.sleep(0.05)
        return text

    def start(self) -> AppProcess:
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, str(self.script), *self.args, f"--port={self.port}"],
                cwd=self.cwd,
                env=self.env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec_fn,
            )
        deadline = time.monotonic() + 20
        while True:
            try:
                urllib.request.urlopen(self.base_url + "/livez", timeout=1)
                return self
            except OSError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"server did not start:\n{self.output}") from None
                time.sleep(0.05)

    def send_signal(self, sig: int) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float = 20) -> int:
        """Wait for the process to exit; return its exit code."""
        assert self.process is not None
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.returncode = self.process.wait()
        self.process = None
        return self.returncode

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process is None:
            return self.returncode or 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.wait()

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def app_processes(env: dict[str, str], count: int) -> Iterator[list[AppProcess]]:
    """``count`` server processes with the same environment, stopped afterwards."""
    apps = [AppProcess(env) for _ in range(count)]
    try:
        for app in apps:
            app.start()
        yield apps
    finally:
        for app in apps:
            app.__exit__()


# A new P-256 key, unencrypted: what every certificate here is made with.
EC_KEY = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


class TestPKI:
    """A throwaway CA with server and client certificates, made with the openssl CLI at run time."""

    __test__ = False

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.openssl = require_binary("openssl")
        self.ca_cert, self.ca_key = self._path("ca.crt"), self._path("ca.key")
        self._run(
            "req",
            "-x509",
            *EC_KEY,
            "-keyout",
            self.ca_key,
            "-out",
            self.ca_cert,
            "-days",
            "2",
            "-subj",
            "/CN=Session server test CA",
        )
        self.server_cert, self.server_key = self.issue("server", "subjectAltName=IP:127.0.0.1,DNS:localhost")
        self.client_cert, self.client_key = self.issue("client", "extendedKeyUsage=clientAuth")

    def _path(self, name: str) -> str:
        return str(self.dir / name)

    def _run(self, *args: str) -> None:
        subprocess.run([self.openssl, *args], check=True, capture_output=True)

    def issue(self, name: str, extension: str) -> tuple[str, str]:
        """Sign a certificate for ``name`` with ``extension``; return (cert path, key path)."""
        cert, key, csr, ext = (self._path(f"{name}.{s}") for s in ("crt", "key", "csr", "ext"))
        Path(ext).write_text(extension + "\n")
        self._run("req", *EC_KEY, "-keyout", key, "-out", csr, "-subj", f"/CN={name}")
        self._run(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.ca_cert,
            "-CAkey",
            self.ca_key,
            "-CAcreateserial",
            "-out",
            cert,
            "-days",
            "2",
            "-extfile",
            ext,
        )
        return cert, key


class Nginx:
    """nginx in the foreground with the deploy site rendered for this test's ports and paths."""

    def __init__(self, directory: Path, site: str) -> None:
        self.binary = require_binary("nginx")
        self.dir = directory
        self.site = site
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Nginx:
        for sub in ("tmp", "logs"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        (self.dir / "site.conf").write_text(self.site)
        user = "user root;\n" if os.geteuid() == 0 else ""
        temp = "".join(
            f"    {kind}_temp_path {self.dir}/tmp/{kind};\n"
            for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        (self.dir / "nginx.conf").write_text(
            f"{user}worker_processes 1;\npid {self.dir}/nginx.pid;\nerror_log {self.dir}/logs/error.log warn;\n"
            "events { worker_connections 256; }\n"
            "http {\n    include /etc/nginx/mime.types;\n    default_type application/octet-stream;\n"
            f"    access_log {self.dir}/logs/access.log;\n{temp}    include {self.dir}/site.conf;\n}}\n"
        )
        check = subprocess.run(
            [self.binary, "-t", "-p", str(self.dir), "-c", str(self.dir / "nginx.conf")], capture_output=True, text=True
        )
        if check.returncode != 0:
            raise RuntimeError(f"nginx refused the configuration:\n{check.stderr}")
        self.process = subprocess.Popen(
            [self.binary, "-p", str(self.dir), "-c", str(self.dir / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None


def listening_addresses(pid: int) -> list[tuple[str, int]]:
    """The (address, port) pairs process ``pid`` listens on over TCP, read from /proc."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state != "0A" or inode not in inodes:  # 0A: LISTEN
                continue
            address_hex, port_hex = local.split(":")
            raw = bytes.fromhex(address_hex)
            # /proc prints each 32-bit word in host (little-endian) order.
            words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
            found.append((str(ipaddress.ip_address(words)), int(port_hex, 16)))
            assert len(address_hex) == width
    return found


@contextlib.contextmanager
def prod_behind_nginx(root: Path, pki: TestPKI, static_root: Path) -> Iterator[str]:
    """A prod app process on memcached, with the demo users, behind the deploy's nginx over TLS
    serving ``static_root``: yields the site's origin (https://localhost:PORT)."""
    sys.path.insert(0, str(ROOT / "deploy"))
    from render_nginx import render

    with Memcached() as memcached:
        env = {
            "SESSION_SECRETS": secrets.token_urlsafe(32),  # a fresh random secret, as every test's
            "USERS_FILE": str(DEMO_USERS_FILE),
            "MEMCACHED_SERVERS": memcached.address,
        }
        with AppProcess(env, args=("--env=prod",)) as app:
            https_port = free_port()
            site = render(
                server_name="localhost",
                app_ports=[app.port],
                certificate=pki.server_cert,
                certificate_key=pki.server_key,
                static_root=str(static_root),
                http_listen=f"127.0.0.1:{free_port()}",
                https_listen=f"127.0.0.1:{https_port}",
            )
            nginx = Nginx(root / "nginx", site).start()
            try:
                wait_for_port(https_port)
                yield f"https://localhost:{https_port}"
            finally:
                nginx.stop()
