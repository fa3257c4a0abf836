"""bench/stores.py's machinery: a short paired round on memcached and Redis, and its section of
BENCHMARKS.md, which a full benchmark run keeps. No test asserts a timing."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import pytest

from bench.report import STORES_SECTION, replace_section, section
from bench.run import Server
from bench.stores import markdown, still_logged_in
from tests.services import ROOT, require_binary

pytestmark = pytest.mark.slow


def test_a_short_paired_round_measures_both_stores_and_renders(tmp_path):
    for binary in ("wrk", "memcached", "redis-server"):
        require_binary(binary)
    result = subprocess.run(
        [
            sys.executable,
            "bench/stores.py",
            "--rounds",
            "2",  # the second starts the servers again
            "--duration",
            "1",
            "--concurrency",
            "2",
            "--sessions",
            "5",
            "--out",
            str(tmp_path),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(next(tmp_path.glob("stores-*.json")).read_text())
    assert figures["errors"] == {"memcached": 0, "redis": 0}
    assert {(row["route"], row["concurrency"]) for row in figures["rows"]} == {("counter", 2), ("balance", 2)}
    assert all(row["redis_rps"] > 0 and row["memcached_rps"] > 0 and row["ratio"] > 0 for row in figures["rows"])
    text = markdown(figures)
    assert text.startswith(STORES_SECTION) and "| page counter (GET /api) | 2 |" in text
    doc = "# Benchmarks\n\n## Targets\n\nold\n\n## Notes\n\nlast\n"
    kept = replace_section(doc, STORES_SECTION, text)
    assert section(kept, STORES_SECTION) == text and kept.index("## Notes") < kept.index(STORES_SECTION)


def test_a_full_run_keeps_the_section():
    from bench.report import KEPT_SECTIONS

    assert STORES_SECTION in KEPT_SECTIONS


def test_the_store_calls_benchmark_times_both_stores_calls():
    for binary in ("memcached", "redis-server"):
        require_binary(binary)
    result = subprocess.run(
        [
            sys.executable,
            "bench/store_calls.py",
            *("--at-once", "5", "--sessions", "10", "--rounds", "2", "--repeats", "1"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout)
    assert figures["at_once"] == 5
    for store in ("memcached", "redis"):
        assert figures["us_per_call"][store]["write"] > 0 and figures["us_per_call"][store]["read"] > 0
        assert len(figures["runs"][store]["write"]) == 1


@pytest.mark.gen_test
async def test_a_restarted_server_that_forgot_the_browsers_stops_the_run(app, browser, base_url, tmp_path):
    # bench/stores.py starts its servers again every round and relies on the prepared browsers'
    # sessions still being there; a server that no longer knows them must stop the run.
    await browser.login()
    server = Server("ours-test", [], {}, ROOT, int(base_url.rsplit(":", 1)[1]))
    server.cookies["logged_in"] = tmp_path / "logged_in.cookies"
    loop = asyncio.get_running_loop()
    server.cookies["logged_in"].write_text(browser.cookie_header() + "\n")
    await loop.run_in_executor(None, still_logged_in, server)  # known: returns
    server.cookies["logged_in"].write_text("sid=forgotten\n")
    with pytest.raises(RuntimeError, match="no longer knows a logged-in browser: 401"):
        await loop.run_in_executor(None, still_logged_in, server)
