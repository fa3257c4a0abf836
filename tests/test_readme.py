"""What the README and docs/DEPLOY.md tell a newcomer to run works as they say.

The curl walk-through runs command for command against a real dev server; the handler example's
two files run as the pytest suite a user would copy; every flag of deploy/render_nginx.py is
documented; the example users file loads.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stores.users import UserDirectory
from tests.services import ROOT, AppProcess, require_binary

sys.path.insert(0, str(ROOT / "deploy"))
from render_nginx import main as render_nginx_main

README = (ROOT / "README.md").read_text()
DEPLOY = (ROOT / "docs" / "DEPLOY.md").read_text()


def code_block(after_heading: str, language: str) -> str:
    """The first ``language`` code block after ``after_heading`` in the README."""
    rest = README[README.index(after_heading) :]
    match = re.search(rf"```{language}\n(.*?)```", rest, re.S)
    assert match, after_heading
    return match.group(1)


def curl_tour() -> tuple[str, list[tuple[str, str]]]:
    """The tour's set-up line and its (command, expected output) pairs."""
    lines = code_block("## A session, step by step, with curl", "sh").splitlines()
    setup = lines[0]
    steps: list[tuple[str, str]] = []
    command = ""
    for line in lines[1:]:
        if line.strip().startswith("#"):  # the expected output of the command above, on its own line
            steps[-1] = (steps[-1][0], line.strip()[1:].strip())
            continue
        command += line.rstrip("\\").rstrip() + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            text, _, expected = command.partition("  # ")
            steps.append((text.strip(), expected.strip()))
            command = ""
    return setup, steps


def test_the_curl_tour_works_as_written(tmp_path: Path):
    require_binary("curl")
    setup, steps = curl_tour()
    assert setup.startswith("B=http://127.0.0.1:3000; J=")
    assert len(steps) == 7 and all(command.startswith("curl ") for command, _ in steps)
    jar = tmp_path / "jar"
    with AppProcess({}, args=("--env=dev",)) as server:
        for command, expected in steps:
            shell = f"B={server.base_url}; J={jar}; {command}"
            result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=30, check=True)
            assert result.stdout == expected, command
        server.wait_for_output("POST /api/logout 200", "GET /api/balance 401")
        log = server.output
    # After logout the jar holds no session cookie, so the server never meets a dead one.
    assert "unknown session" not in log and "session.unknown" not in log
    assert "\tsid\t" not in jar.read_text()


def test_the_handler_example_runs_as_a_users_own_test_suite(tmp_path: Path):
    handler = code_block("## Write your own handler", "python")
    test = code_block("Test it with pytest-tornado", "python")
    assert handler.startswith("# cart.py\n") and test.startswith("# test_cart.py")
    (tmp_path / "cart.py").write_text(handler)
    (tmp_path / "test_cart.py").write_text(test)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_cart.py"],
        cwd=tmp_path,
        env={"PYTHONPATH": f"{ROOT}:{tmp_path}", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_the_handler_example_is_served_by_its_own_script(tmp_path: Path):
    require_binary("curl")
    launcher = code_block("Serve it with a script of your own", "python")
    assert launcher.startswith("# serve_cart.py")
    (tmp_path / "cart.py").write_text(code_block("## Write your own handler", "python"))
    (tmp_path / "serve_cart.py").write_text(launcher)
    env = {"PYTHONPATH": f"{ROOT}:{tmp_path}"}
    with AppProcess(env, args=("--env=test",), script=tmp_path / "serve_cart.py", cwd=tmp_path) as server:
        base, jar = server.base_url, tmp_path / "jar"

        def curl(*args: str) -> str:
            command = ["curl", "-s", "-c", str(jar), "-b", str(jar), "-H", f"Origin: {base}", *args]
            return subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout

        json_body = ("-H", "Content-Type: application/json", "-d")
        assert curl(*json_body, '"apple"', f"{base}/api/cart") == '{"errorMessage":"You must be logged in."}'
        login = '{"email":"max@gmail.com","password":"1234"}'
        assert '"email":"max@gmail.com"' in curl(*json_body, login, f"{base}/api/login")
        curl(*json_body, '"apple"', f"{base}/api/cart")
        assert curl(f"{base}/api/cart") == '{"items":["apple"]}'
        assert curl(f"{base}/api") == "Welcome to this page for the first time!"  # the API is still there
        server.send_signal(signal.SIGTERM)
        assert server.wait() == 0  # server.py's own graceful stop
        assert "stopped" in server.output


def test_every_render_nginx_flag_has_help_and_is_in_the_deploy_guide(capsys: pytest.CaptureFixture[str]):
    with pytest.raises(SystemExit):
        render_nginx_main(["--help"])
    text = capsys.readouterr().out
    flags = re.findall(r"^  (--[a-z-]+)", text, re.M)
    assert "--http-listen" in flags and "--https-listen" in flags and len(flags) >= 8
    for flag in flags:
        if flag == "--help":
            continue
        # Its help line says something beyond the flag's own name.
        assert re.search(rf"^  {flag}(?: [A-Z_]+)?\s+\S.*$", text, re.M) or re.search(
            rf"^  {flag}(?: [A-Z_]+)?\n\s+\S", text, re.M
        ), flag
        assert f"`{flag}`" in DEPLOY, flag


def test_the_example_users_file_loads_and_holds_no_demo_password():
    path = ROOT / "deploy" / "users.example.json"
    users = UserDirectory.from_file(path)
    try:
        assert users.get("ann@example.com") is not None
        assert "password" not in path.read_text().replace("password_hash", "")
    finally:
        users.close()
