"""Settings per environment, environment variables, prod refusals, and the command line."""

from __future__ import annotations

import json
import logging
import os
import pty
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from settings import SettingsError, load_settings
from stores.users import UserDirectory, UsersFileError, _parse_hash, hash_password, verify_password
from tests.conftest import test_secret
from tests.services import TestPKI, free_port

ROOT = Path(__file__).resolve().parent.parent
LONG = "p" * 40
REDIS_SENTINELS = {"SESSION_STORE": "redis", "REDIS_SENTINELS": "a:1", "REDIS_SENTINEL_SERVICE": "s"}


def run_server(*args: str, env: dict[str, str] | None = None, stdin: str | None = None, timeout: float = 20):
    full_env = {k: v for k, v in os.environ.items() if k not in ("SESSION_SECRETS", "USERS_FILE", "CORS_ORIGINS")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "server.py", *args],
        cwd=ROOT,
        env=full_env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_dev_defaults():
    s = load_settings("dev", environ={})
    assert (s.host, s.port) == ("127.0.0.1", 3000)
    assert s.store == "memory"
    assert (s.cookie_name, s.cookie_secure, s.cookie_httponly, s.cookie_samesite) == ("sid", False, True, "Lax")
    assert s.cors_origins == ("http://localhost:4736",)
    assert len(s.session_secrets) == 1  # a random one for this process


def test_prod_defaults_with_the_required_variables(tmp_path):
    s = load_settings("prod", environ={"SESSION_SECRETS": LONG, "USERS_FILE": str(tmp_path / "u.json")})
    assert s.cookie_name == "__Host-sid"
    assert s.cookie_secure and s.cookie_httponly and s.cookie_samesite == "Lax"
    assert s.cookie_domain is None
    assert (s.idle_timeout, s.absolute_timeout) == (30 * 60, 12 * 3600)
    assert s.store == "memcached"
    assert s.xheaders


def test_environment_variables_override(tmp_path):
    secrets_file = tmp_path / "secrets"
    secrets_file.write_text("new secret with spaces \nold\n")
    s = load_settings(
        "dev",
        environ={
            "SESSION_SECRETS_FILE": str(secrets_file),
            "CORS_ORIGINS": "https://a.example, https://b.example:8443",
            "HOST": "0.0.0.0",
            "PORT": "4000",
            "USERS_FILE": "/x/users.json",
            "SESSION_IDLE_TIMEOUT": "60",
            "SESSION_ABSOLUTE_TIMEOUT": "3600",
            "MEMCACHED_SERVERS": "10.0.0.1:11211,10.0.0.2:11211",
            "REDIS_URL": "redis://app:pw@10.0.0.3:6379/2",
        },
    )
    assert s.session_secrets == ("new secret with spaces ", "old")  # used exactly as written
    assert s.cors_origins == ("https://a.example", "https://b.example:8443")
    assert (s.host, s.port, s.users_file) == ("0.0.0.0", 4000, "/x/users.json")
    assert (s.idle_timeout, s.absolute_timeout) == (60, 3600)
    # Each store's options are its own, read by the store chosen; none is checked by settings.
    assert s.store_options["memcached"] == {"servers": "10.0.0.1:11211,10.0.0.2:11211"}
    assert s.store_options["redis"] == {"url": "redis://app:pw@10.0.0.3:6379/2"}
    assert load_settings("dev", environ={"SESSION_SECRETS": " a ,b"}).session_secrets == (" a ", "b")


def test_prod_refuses_every_unsafe_setting_at_once():
    with pytest.raises(SettingsError) as caught:
        load_settings(
            "prod",
            environ={"SESSION_SECRETS": f"short,{LONG}", "CORS_ORIGINS": "*,null"},
            cookie_secure=False,
            cookie_samesite="None",
            cookie_name="sid",
            store="memory",
        )
    text = str(caught.value)
    for expected in (
        "position 1 shorter than 32 bytes",
        "cookie_secure",
        "SameSite=None",
        "'*'",
        "'null'",
        "store (SESSION_STORE): the memory store",
        "USERS_FILE",
    ):
        assert expected in text, expected
    assert len(caught.value.problems) >= 7


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "example.com"])
def test_prod_listens_on_loopback_only(host):
    with pytest.raises(SettingsError) as caught:
        load_settings("prod", environ={"SESSION_SECRETS": LONG, "USERS_FILE": "/u.json", "HOST": host})
    assert "not a loopback address" in str(caught.value)
    for loopback in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        load_settings("prod", environ={"SESSION_SECRETS": LONG, "USERS_FILE": "/u.json", "HOST": loopback})


def test_prod_refuses_a_missing_secret():
    with pytest.raises(SettingsError) as caught:
        load_settings("prod", environ={"USERS_FILE": "/u.json"})
    assert "SESSION_SECRETS" in str(caught.value)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PORT": "abc"}, "PORT: expected a whole number"),
        ({"PORT": "70000"}, "not a TCP port"),
        ({"SESSION_IDLE_TIMEOUT": "7200", "SESSION_ABSOLUTE_TIMEOUT": "3600"}, "longer than absolute_timeout"),
        ({"SESSION_IDLE_TIMEOUT": "0"}, "must be positive"),
        ({"CORS_ORIGINS": "http://a.example/path"}, "not an origin"),
        ({"CORS_ORIGINS": "http://LOCALHOST:4736"}, "browsers send 'http://LOCALHOST:4736' as 'http://localhost:4736'"),
        ({"CORS_ORIGINS": "https://app.example:443"}, "as 'https://app.example': write that"),
        ({"CORS_ORIGINS": "http://[::1]:08080"}, "as 'http://[::1]:8080'"),
        ({"SESSION_STORE": "memcached", "MEMCACHED_SERVERS": "a:1,nohost"}, "entry 2 of 2: not host:port"),
        (
            {"SESSION_STORE": "memcached", "MEMCACHED_SERVRES": "a:1"},
            "MEMCACHED_SERVRES): memcached has no such option",
        ),
        ({"SESSION_STORE": "memcached", "MEMCACHED_THREADS": "0"}, "expected a positive whole number"),
        ({"SESSION_STORE": "memcached", "MEMCACHED_BUSY_POLL": "-1"}, "BUSY_POLL): expected a non-negative number"),
        ({"SESSION_STORE": "memcached", "MEMCACHED_COPIES": "1.5"}, "MEMCACHED_COPIES): expected a non-negative"),
        ({"SESSION_STORE": "redis", "REDIS_COPIES": "-1"}, "REDIS_COPIES): expected a non-negative"),
        ({"SESSION_STORE": "redis", "REDIS_URL": "http://x"}, "REDIS_URL): a redis://, rediss:// or unix:// URL"),
        ({"SESSION_STORE": "redis", "REDIS_URL": "unix://"}, "REDIS_URL): unix:// needs the socket's path"),
        ({**REDIS_SENTINELS, "REDIS_URL": "unix:///run/redis.sock"}, "with sentinels, a redis:// or rediss:// URL"),
        ({"SESSION_STORE": "redis", "REDIS_SENTINELS": "a:1"}, "set both or neither of sentinels, sentinel_service"),
        ({"SESSION_STORE": "redis", "REDIS_SENTINEL_PASSWORD": "pw"}, "REDIS_SENTINEL_PASSWORD): only with sentinels"),
        ({**REDIS_SENTINELS, "REDIS_SENTINEL_USERNAME": "watcher"}, "SENTINEL_USERNAME): needs sentinel_password"),
        ({"SESSION_STORE": "memory", "MEMORY_MAX_SESSIONS": "-1"}, "MEMORY_MAX_SESSIONS): expected a positive"),
        ({"SESSION_SECRETS": "same,same"}, "listed twice"),
        ({"SESSION_SECRETS_FILE": "/does/not/exist"}, "cannot read '/does/not/exist': No such file or directory"),
        ({"LOG_FORMAT": "xml"}, "not text or json"),
        ({"DRAIN_TIMEOUT": "soon"}, "DRAIN_TIMEOUT: expected a whole number"),
        ({"SESSION_STORE": "mongo"}, "'mongo' is not one of memory, memcached, redis"),
        ({"SESSION_STORE": "memcached", "MEMCACHED_TLS_CERT": "/etc/hostname"}, "set both or neither"),
        ({"SESSION_STORE": "memcached", "MEMCACHED_TLS_CA": "/does/not/exist"}, "not a readable file"),
    ],
)
def test_bad_values_are_named(environ, message):
    with pytest.raises(SettingsError) as caught:
        load_settings("dev", environ=environ)
    assert message in str(caught.value)


def test_a_secrets_file_that_cannot_be_read_is_no_reason_for_a_random_secret(caplog, tmp_path):
    empty = tmp_path / "secrets"
    empty.write_text("\n")
    for path in ("/does/not/exist", str(empty)):
        with caplog.at_level(logging.WARNING, logger="settings"), pytest.raises(SettingsError) as caught:
            load_settings("dev", environ={"SESSION_SECRETS_FILE": path})
        assert "at least one secret is required" in str(caught.value)
        assert "random secret" not in caplog.text


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # A password with "/" (base64 makes them) breaks the URL: the message says how, without it.
        ("redis://sessions:Zk3q/9xY+w==@10.0.0.5:6379/0", "not a URL redis-py reads"),
        ("redis://sessions:Zk3q?9xY@10.0.0.5:6379/0", "not a URL redis-py reads"),
        # Query options redis-py would hand to every connection: a typo failed every request, and
        # some undo TLS checks.
        ("redis://10.0.0.5/0?ssl_ca_certs=/etc/hostname", "a query option this store does not take (it takes db)"),
        ("unix:///run/redis.sock?socket_timeout=5", "a query option this store does not take (it takes db)"),
        ("rediss://10.0.0.5/0?ssl_cert_reqs=none", "(it takes db, ssl_ca_certs, ssl_certfile, ssl_keyfile)"),
        ("rediss://10.0.0.5/0?ssl_check_hostname=false", "a query option this store does not take"),
        ("rediss://10.0.0.5/0?ssl_ca_certs=/does/not/exist", "ssl_ca_certs: not a readable file"),
        ("rediss://10.0.0.5/0?ssl_ca_certs=/etc/hostname", "ssl_ca_certs: not a readable file of CA certificates"),
        ("rediss://10.0.0.5/0?ssl_keyfile=/etc/hostname", "ssl_keyfile: only with ssl_certfile"),
        ("redis://10.0.0.5/0?db=zero", "not a URL redis-py reads"),
        ("redis://10.0.0.5/0?db=-1", "db: a whole number"),
        ("redis://10.0.0.5/1x", "not a URL redis-py reads"),
        # What an unencoded / # or ? in a password can leave: a URL of another host, or of none,
        # that redis-py reads without a word (and sends no password).
        ("redis://:/Zk3q9xY@10.0.0.5:6379/0", "not a URL redis-py reads"),
        ("redis://:8812/Zk3q@10.0.0.5:6379/0", "not a URL redis-py reads"),
        ("redis://sessions:#Zk3q@10.0.0.5/0", "not a URL redis-py reads"),
        ("redis://", "not a URL redis-py reads"),
    ],
)
def test_a_redis_url_is_checked_and_its_password_never_shown(url: str, message: str):
    with pytest.raises(SettingsError) as caught:
        load_settings("dev", environ={"SESSION_STORE": "redis", "REDIS_URL": url})
    assert message in str(caught.value)
    assert "Zk3q" not in str(caught.value) and "9xY" not in str(caught.value)


def test_a_redis_url_with_what_the_store_takes_is_accepted(tmp_path):
    pki = TestPKI(tmp_path)
    for url in (
        "redis://sessions:Zk3q%2F9xY%2Bw%3D%3D@10.0.0.5:6379/0",
        "redis://[::1]:6379",
        f"rediss://10.0.0.5:6380/2?ssl_ca_certs={pki.ca_cert}&ssl_certfile={pki.client_cert}&ssl_keyfile={pki.client_key}",
        "unix:///run/redis/redis.sock?db=1",
        "unix://sessions:Zk3q%2F9xY@/run/redis/redis.sock",
    ):
        assert load_settings("dev", environ={"SESSION_STORE": "redis", "REDIS_URL": url}).store == "redis"


def test_a_store_option_refused_is_named_never_shown():
    # From a settings module an option may come as any type; a mistyped sentinel entry may hold
    # a password.
    with pytest.raises(SettingsError) as caught:
        load_settings(
            "dev",
            session_secrets=(test_secret(),),
            store="redis",
            store_options={
                "redis": {"sentinel_password": b"hunter2-secret", "sentinels": "s1:26379,sessions:hunter2@s2:26379"}
            },
        )
    assert "expected text, got bytes" in str(caught.value) and "entry 2 of 2: not host:port" in str(caught.value)
    assert "hunter2" not in str(caught.value)


def test_password_hashes_round_trip_and_carry_their_cost():
    h = hash_password("s3cret", cost=(10, 8, 1))
    assert h.startswith("scrypt$10$8$1$")
    assert verify_password("s3cret", h)
    assert not verify_password("s3cret ", h)
    assert hash_password("s3cret", cost=(10, 8, 1)) != h  # salted


def test_an_unknown_email_costs_the_dearest_hash_and_cheaper_ones_are_named(caplog):
    # By work (2^log_n * r * p), not by log_n first: (10, 8, 1) is four times (11, 1, 1).
    entries = [
        {"email": f"u{i}@example.com", "name": "U", "balance": 1, "password_hash": hash_password("x", cost)}
        for i, cost in enumerate([(11, 1, 1), (10, 8, 1), (10, 8, 1)])
    ]
    with caplog.at_level(logging.WARNING, logger="users"):
        users = UserDirectory(entries)
    assert _parse_hash(users._decoy_hash)[:3] == (10, 8, 1)
    assert "1 of 3 accounts have a cheaper password hash than the dearest (N=2^10 r=8 p=1)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="users"):
        UserDirectory(entries[1:])
    assert "cheaper password hash" not in caplog.text


@pytest.mark.parametrize(
    "entries",
    [
        {"not": "a list"},
        [{"email": "a@b", "name": "A", "balance": 1}],
        [{"email": "a@b", "name": "A", "balance": "1", "password_hash": "x"}],
        [{"email": "a@b", "name": "A", "balance": 1, "password_hash": "plaintext"}],
        [{"email": "nope", "name": "A", "balance": 1, "password_hash": "x"}],
    ],
)
def test_malformed_users_files_are_refused(tmp_path, entries):
    path = tmp_path / "users.json"
    path.write_text(json.dumps(entries))
    with pytest.raises(UsersFileError) as caught:
        UserDirectory.from_file(path)
    assert f"users file {str(path)!r}" in str(caught.value)


# The command line, as a user runs it --------------------------------------------------------------


def test_help_documents_every_flag():
    r = run_server("--help")
    assert r.returncode == 0
    for flag in ("--env", "--host", "--port", "hash-password", "SESSION_SECRETS", "MEMCACHED_SERVERS"):
        assert flag in r.stdout


@pytest.mark.parametrize("args", [("--nope",), ("--env=staging",), ("--port=abc",), ("frobnicate",)])
def test_unknown_flags_and_values_exit_non_zero(args):
    r = run_server(*args)
    assert r.returncode == 2
    assert "usage:" in r.stderr and "error:" in r.stderr


def test_prod_start_is_refused_naming_the_settings():
    r = run_server("--env=prod", env={"SESSION_SECRETS": "short", "CORS_ORIGINS": "*"})
    assert r.returncode == 2
    for expected in ("shorter than 32 bytes", "'*'", "USERS_FILE"):
        assert expected in r.stderr
    assert "Traceback" not in r.stderr


def test_a_bad_users_file_is_refused(tmp_path):
    path = tmp_path / "users.json"
    path.write_text("[{")
    r = run_server("--env=test", env={"USERS_FILE": str(path)})
    assert r.returncode == 2
    assert "not valid JSON" in r.stderr


def test_hash_password_reads_stdin_and_prints_a_usable_hash(tmp_path):
    r = run_server("hash-password", stdin="correct horse\n")
    assert r.returncode == 0
    line = r.stdout.strip().splitlines()[-1]
    assert verify_password("correct horse", line)
    assert "correct horse" not in r.stdout + r.stderr
    assert run_server("hash-password", stdin="").returncode == 2


def test_hash_password_at_a_terminal_ends_cleanly_on_ctrl_d():
    # A terminal (a pty) on standard input, and no controlling terminal: getpass reads the pty.
    primary, secondary = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "server.py"), "hash-password"],
        stdin=secondary,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    os.close(secondary)
    assert process.stderr is not None
    prompt = b""
    while not prompt.endswith(b"Password: "):  # the terminal is set up once the prompt is out
        chunk = process.stderr.read(1)
        assert chunk, prompt
        prompt += chunk
    os.write(primary, b"\x04")  # Ctrl-D at the prompt
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        os.close(primary)
    assert process.returncode == 2
    assert b"Traceback" not in stderr and b"no password given" in stderr


def test_server_serves_a_users_file_and_stops_cleanly(tmp_path):
    users = tmp_path / "users.json"
    users.write_text(
        json.dumps(
            [
                {
                    "email": "ann@example.com",
                    "name": "Ann",
                    "balance": 7,
                    "password_hash": hash_password("pw", cost=(10, 8, 1)),
                }
            ]
        )
    )
    port = free_port()
    env = {k: v for k, v in os.environ.items()}
    env.update(USERS_FILE=str(users), SESSION_SECRETS=test_secret())
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--env=test", f"--port={port}"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                urllib.request.urlopen(base + "/livez", timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.1)
        request = urllib.request.Request(
            base + "/api/login",
            data=json.dumps({"email": "ann@example.com", "password": "pw"}).encode(),
            headers={"Content-Type": "application/json", "Origin": base},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            assert json.load(response) == {"user": {"email": "ann@example.com", "name": "Ann"}}
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, output
    assert "stopped" in output


@pytest.mark.parametrize("store", ["memcached", "redis"])
def test_a_key_prefix_a_store_cannot_take_is_refused_at_start_up(store):
    with pytest.raises(SettingsError) as caught:
        load_settings("dev", environ={}, store=store, store_options={store: {"prefix": "two words:"}})
    assert any(problem.startswith(f"{store} option prefix") for problem in caught.value.problems)


def test_only_the_chosen_store_is_imported_with_its_client_library():
    # The session layer and settings load without any store's client library; choosing a store
    # imports its own only.
    script = (
        "import sys, settings, handlers.app, stores.base;"
        "settings.load_settings('dev', environ={'MEMCACHED_SERVERS': 'nohost'});"
        "print(sorted(m for m in ('pymemcache', 'redis') if m in sys.modules));"
        "settings.load_settings('dev', environ={'SESSION_STORE': 'redis'});"
        "print(sorted(m for m in ('pymemcache', 'redis') if m in sys.modules))"
    )
    r = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["[]", "['redis']"]


def test_another_store_s_variables_are_named_as_ignored(caplog):
    with caplog.at_level(logging.WARNING, logger="settings"):
        s = load_settings("dev", environ={"REDIS_URL": "redis://127.0.0.1:6379/0", "SESSION_SECRETS": LONG})
    assert s.store == "memory"
    assert "REDIS_URL set, but the store is memory (SESSION_STORE): ignored" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="settings"):
        load_settings("dev", environ={"SESSION_STORE": "redis", "REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert "ignored" not in caplog.text
