"""The benchmark's machinery, in a few seconds (timings are never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.services import ROOT, require_binary

pytestmark = pytest.mark.slow  # the benchmark's machinery, valgrind included


def test_paired_rounds_against_a_revision_measure_both_sides(tmp_path):
    require_binary("wrk")
    require_binary("memcached")
    command = [sys.executable, "bench/paired.py", "--baseline", "HEAD", "--rounds", "1", "--duration", "1"]
    command += ["--concurrency", "2", "--stores", "memory", "--sessions", "5", "--out", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (path,) = tmp_path.glob("paired-*.json")
    report = json.loads(path.read_text())
    assert report["errors"] == {"ours": 0, "base": 0}
    rows = {(r["store"], r["route"], r["concurrency"]): r for r in report["rows"]}
    assert set(rows) == {("memory", "counter", 2), ("memory", "balance", 2)}
    for row in rows.values():
        assert row["ours_rps"] > 0 and row["baseline_rps"] > 0 and row["ratio"]["median"] > 0
    # The baseline's temporary worktree is gone again.
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "bench-baseline-" not in worktrees


def test_bench_smoke_run_measures_every_scenario(tmp_path):
    require_binary("wrk")
    require_binary("memcached")
    result = subprocess.run(
        [sys.executable, "bench/run.py", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((tmp_path / "latest.json").read_text())
    seen = {(r["server"], r["scenario"], r["concurrency"]) for r in report["results"]}
    for server in ("ours-memory", "ours-memcached"):
        for scenario in ("ceiling", "counter", "balance"):
            for concurrency in (1, 4):
                assert (server, scenario, concurrency) in seen
    assert ("ours-delayed", "counter", 1) in seen
    for r in report["results"]:
        assert r["rps"] > 0 and r["errors"] == 0, r
        assert 0 < r["p50_ms"] <= r["p99_ms"]
        if r["server"] in ("ours-memory", "ours-memcached"):
            # The server's CPU over each run: whole-process figures, the IOLoop thread's within them.
            assert 0 < r["loop_us"] <= r["cpu_us"] and 0 < r["busy"] <= 1.2, r
    cpu = {(row["server"], row["scenario"]): row for row in report["cpu"]}
    assert set(cpu) == {(s, c) for s in ("ours-memory", "ours-memcached") for c in ("ceiling", "counter", "balance")}
    assert cpu[("ours-memcached", "balance")]["cpu_ratio"][0] > 0 and "cpu_ratio" not in cpu[("ours-memory", "ceiling")]
    assert cpu[("ours-memcached", "balance")]["busy_ratio"][0] > 0
    names = {t["target"] for t in report["targets"]}
    assert {"memory counter / ceiling", "20 ms memcached: counter c=4 / c=1"} <= names
    assert "targets:" in result.stdout
    from bench.run import split_cpus

    split = split_cpus()
    assert report["machine"]["server_cpus"] == (sorted(split[0]) if split else None)
    alone = report["session_layer_us"]
    assert set(alone) >= {"load_increment_save", "decode_record_json", "encode_record_json"}
    assert all(us > 0 for us in alone.values())
    # The report renders from these results: markdown with the targets and every figure.
    from bench.report import write_markdown

    report["seconds"] = 1.0
    report["instructions"] = {"memory": {"ceiling": 800.0, "counter": 880.0, "balance": 860.0}}
    write_markdown(report, tmp_path / "BENCHMARKS.md", "chart.png")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| memory counter / ceiling |" in text and "## The session layer alone" in text
    assert "## Server CPU per request (4 connections)" in text
    assert "| counter | 880.0 | 0.909 |" in text and "| ceiling | 800.0 |  |" in text


def test_ratio_targets_pair_the_runs_of_each_round():
    from bench.run import evaluate

    def entry(server: str, scenario: str, per_round: list[float]) -> dict[str, Any]:
        runs = [{"rps": r, "p50_ms": 10.0, "p99_ms": 20.0} for r in per_round]
        median = sorted(per_round)[1]
        return {**runs[0], "server": server, "scenario": scenario, "concurrency": 50, "rps": median, "runs": runs}

    # Round 2 ran on a fast stretch of the machine for the counter only: the ratio of the medians
    # would say 1.35; the rounds' own ratios say 0.9, 1.5 and 0.9.
    results = [
        entry("ours-memory", "ceiling", [100, 200, 300]),
        entry("ours-memory", "counter", [90, 300, 270]),
    ]
    target = next(t for t in evaluate(results, None, 50) if t["target"] == "memory counter / ceiling")
    assert (target["value"], target["spread"], target["met"]) == (0.9, [0.9, 1.5], True)


def test_instruction_counter_measures_every_route():
    require_binary("valgrind")
    result = subprocess.run(
        [sys.executable, "bench/instructions.py", "--requests", "10", "--connections", "3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = {line.split()[2]: float(line.split()[3]) for line in result.stdout.splitlines()}
    assert set(figures) == {"ceiling", "counter", "balance"}
    assert all(thousands > 0 for thousands in figures.values())


def test_runs_a_ratio_pairs_are_close_together(monkeypatch, tmp_path):
    import argparse

    import bench.run as bench_run

    calls: list[tuple[str, str, int]] = []

    def fake_wrk(url: str, path: str, cookies: Any, concurrency: int, duration: int) -> dict[str, float]:
        calls.append((url, path, concurrency))
        return {"rps": 1.0, "p50_ms": 1.0, "p99_ms": 1.0, "errors": 0}

    monkeypatch.setattr(bench_run, "wrk", fake_wrk)
    servers = [bench_run.Server(name, [], {}, tmp_path, port) for name, port in (("a", 1), ("b", 2), ("c", 3))]
    for server in servers:
        server.cookies = {"anonymous": tmp_path, "logged_in": tmp_path}
    bench_run.measure(servers, argparse.Namespace(runs=2, target_runs=4, concurrency=[1, 10, 50], duration=1))
    measured = calls[len(servers) :]  # after one warm-up per server
    per_round = len(servers) * len(bench_run.SCENARIOS) * 3
    # Two full rounds, then two more of the highest concurrency alone (the targets' figures).
    extra = measured[2 * per_round :]
    assert len(extra) == 2 * len(servers) * len(bench_run.SCENARIOS)
    assert {c for _, _, c in extra} == {50} and len(set(extra)) == len(extra) // 2
    measured = measured[: 2 * per_round]
    for start in range(0, len(measured), per_round):
        round_calls = measured[start : start + per_round]
        assert len(set(round_calls)) == per_round  # every combination once
        block = len(servers) * len(bench_run.SCENARIOS)
        for b in range(0, per_round, block):
            # One concurrency at a time, and one server's scenarios back to back within it.
            assert len({c for _, _, c in round_calls[b : b + block]}) == 1
            urls = [u for u, _, _ in round_calls[b : b + block]]
            runs_of_each = [urls[i : i + len(bench_run.SCENARIOS)] for i in range(0, block, len(bench_run.SCENARIOS))]
            assert all(len(set(run)) == 1 for run in runs_of_each)


def test_servers_are_pinned_to_a_core_of_their_own():
    import os
    import time
    from pathlib import Path

    from bench.run import pin, split_cpus

    split = split_cpus()
    if len(os.sched_getaffinity(0)) < 2:
        assert split is None
        return
    assert split is not None
    server_cpus, load_cpus = split
    assert len(server_cpus) == 1 and not server_cpus & load_cpus
    assert server_cpus | load_cpus == os.sched_getaffinity(0)
    # A process with a thread already running, like a server once it answers.
    code = "import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); time.sleep(30)"
    child = subprocess.Popen([sys.executable, "-c", code])
    try:
        tasks = Path(f"/proc/{child.pid}/task")
        deadline = time.monotonic() + 10
        while len(list(tasks.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pin(child.pid, server_cpus)
        assert {int(t.name): os.sched_getaffinity(int(t.name)) for t in tasks.iterdir()} == {
            int(t.name): server_cpus for t in tasks.iterdir()
        }
    finally:
        child.kill()
        child.wait()


def test_memory_store_measure_sweeps_each_wave_apart():
    result = memory_sessions("--sessions", "3000", "--expire", "400", "--waves", "3")
    assert result.returncode == 0, result.stderr
    memory = json.loads(result.stdout)
    # Each wave frees its own sessions and stops at the first live one.
    assert [wave["expired"] for wave in memory["waves"]] == [400, 400, 400]
    assert memory["remaining"] == 3000 - 3 * 400 and memory["expired"] == 400
    low, high = memory["longest_stall_spread_ms"]
    assert low <= memory["longest_stall_ms"] <= high
    assert sorted(wave["longest_stall_ms"] for wave in memory["waves"])[1] == memory["longest_stall_ms"]
    assert memory["rss_bytes_per_session"] > 0
    from bench.run import evaluate

    stall = next(t for t in evaluate([], memory, 50) if t["target"].startswith("longest stall"))
    assert stall["spread"] == [low, high]
    refused = memory_sessions("--sessions", "100", "--expire", "50", "--waves", "3")
    assert refused.returncode == 2 and "waves * expire" in refused.stderr


def memory_sessions(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "bench/memory_sessions.py", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_free_ports_are_never_handed_out_twice():
    # Chosen ports are bound later (memcached, the delaying proxy, each server): a port handed out
    # twice put memcached itself where the 20 ms proxy should have been, in a published run.
    from harness import free_port

    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)


def test_a_delayed_figure_that_shows_no_delay_is_refused():
    from bench.run import delayed_figure

    def run(p50_ms: float) -> dict[str, float]:
        return {"rps": 700.0, "p50_ms": p50_ms, "p99_ms": 2 * p50_ms, "errors": 0.0}

    # The withdrawn run's case: memcached itself on the proxy's port, 1.19 ms medians.
    with pytest.raises(RuntimeError, match="under 20 ms"):
        delayed_figure(1, [run(1.19), run(1.2), run(1.3)])
    assert delayed_figure(1, [run(44.3), run(44.1), run(45.0)])["p50_ms"] == 44.3


def test_server_cpu_is_split_between_the_main_thread_and_the_others():
    # The benchmark's CPU per request: the IOLoop (main thread) apart from the store's workers.
    from bench.run import cpu_per_request, cpu_seconds

    code = (
        "import threading, time\n"
        "def spin(seconds, then=None):\n"
        "    end = time.thread_time() + seconds\n"
        "    while time.thread_time() < end: pass\n"
        "    if then: then.set(); time.sleep(30)\n"
        "spin(0.3)\n"
        "spun = threading.Event()\n"
        "threading.Thread(target=spin, args=(0.6, spun), daemon=True).start()\n"
        "spun.wait(); print('spun', flush=True); time.sleep(30)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline() == "spun\n"
        main, others = cpu_seconds(child.pid)
    finally:
        child.kill()
        child.wait()
    assert 0.25 <= main <= 0.55 and 0.55 <= others <= 0.8, (main, others)
    figures = cpu_per_request((1.0, 0.5), (1.3, 0.7), {"requests": 1000, "seconds": 1.0})
    assert figures == pytest.approx({"cpu_us": 500.0, "loop_us": 300.0, "busy": 0.5})


def test_missed_read_note_says_from_the_runs_cpu_whether_the_read_waited():
    from bench.run import memcached_read_note

    def row(scenario: str, cpu_us: float, loop_us: float, busy: float, ratios: bool = True) -> dict[str, Any]:
        found = {"server": "ours-memcached", "scenario": scenario, "cpu_us": cpu_us, "loop_us": loop_us}
        found.update(others_us=cpu_us - loop_us, busy=busy)
        if ratios:
            found.update(
                cpu_ratio=(0.911, [0.68, 0.97]), busy_ratio=(0.987, [0.95, 1.0]), rps_ratio=(0.867, [0.67, 0.97])
            )
        return found

    memory_read = {**row("balance", 409.0, 409.0, 1.0), "server": "ours-memory"}
    report = {"cpu": [row("ceiling", 374.0, 374.0, 0.99, False), row("balance", 431.0, 424.0, 0.98), memory_read]}
    note = memcached_read_note(report, 60.0, 38.0)
    assert "core 0.98 busy on the read (0.99 on its ceiling)" in note
    assert "431 µs of CPU a request against the ceiling's 374" in note
    assert "ceiling CPU / read CPU 0.911, beside a throughput ratio of 0.867" in note
    assert "busy ratio is 0.987 (median): waiting on memcached costs about 1 point," in note
    assert "+15 µs on the IOLoop thread and +7 µs on the worker threads" in note
    # A report without CPU figures (an older run) still gets a note, without the figures it lacks.
    assert "Where it goes" not in memcached_read_note({}, 60.0, 38.0)


def test_regenerated_markdown_keeps_the_written_sections_in_their_order(tmp_path):
    from bench.report import ABUSE_SECTION, HISTORY_SECTION, STORES_SECTION, kept_sections

    path = tmp_path / "BENCHMARKS.md"
    written = [f"{heading}\n\n{heading[3:]} text.\n" for heading in (ABUSE_SECTION, HISTORY_SECTION, STORES_SECTION)]
    path.write_text("# Benchmarks\n\n## Targets\n\nold figures\n\n" + "\n".join(written))
    assert kept_sections(path) == written
