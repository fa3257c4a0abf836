"""Real services for tests: memcached and the app itself, started on free ports and stopped after.

A service whose binary is missing makes its tests skip with a reason naming it, except under
``CI=true``, where it is a failure.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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


class Memcached:
    """A memcached process on a free loopback port."""

    def __init__(self, *extra_args: str, port: int | None = None) -> None:
        self.binary = require_binary("memcached")
        self.port = port or free_port()
        self.extra_args = extra_args
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> Memcached:
        args = [self.binary, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64", "-t", "2"]
        if os.geteuid() == 0:
            args += ["-u", "root"]
        self.process = subprocess.Popen([*args, *self.extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def command(self, line: bytes) -> bytes:
        """Send one raw protocol command and return its one-line reply (mg without v, set, delete)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(line + b"\r\n")
            data = b""
            while not data.endswith(b"\r\n"):
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.strip()

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
        """Every key stored now (via lru_crawler metadump)."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as sock:
            sock.sendall(b"lru_crawler metadump all\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        keys = []
        for line in data.decode().splitlines():
            if line.startswith("key="):
                keys.append(urllib.parse.unquote(line.split()[0][4:]))
        return keys

    def __enter__(self) -> Memcached:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class AppProcess:
    """``server.py`` in a subprocess on a free port, with the given environment variables."""

    def __init__(self, env: dict[str, str], args: tuple[str, ...] = ("--env=test",), port: int | None = None) -> None:
        self.port = port or free_port()
        self.env = {**os.environ, **env}
        self.args = args
        self.process: subprocess.Popen[str] | None = None
        self.output = ""

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> AppProcess:
        self.process = subprocess.Popen(
            [sys.executable, "server.py", *self.args, f"--port={self.port}"],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
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

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.output, _ = self.process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.output, _ = self.process.communicate()
        code = self.process.returncode
        self.process = None
        return code

    def __enter__(self) -> AppProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


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
            app.stop()


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
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
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
        self._run(
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            key,
            "-out",
            csr,
            "-subj",
            f"/CN={name}",
        )
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
