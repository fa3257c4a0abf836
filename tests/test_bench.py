"""The benchmark's machinery, in a few seconds (timings are never asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.services import ROOT, require_binary


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
    names = {t["target"] for t in report["targets"]}
    assert {"memory counter / ceiling", "20 ms memcached: counter c=4 / c=1"} <= names
    assert "targets:" in result.stdout
    alone = report["session_layer_us"]
    assert set(alone) >= {"load_increment_save", "decode_record_json", "encode_record_json"}
    assert all(us > 0 for us in alone.values())
    # The report renders from these results: markdown with the targets and every figure.
    from bench.report import write_markdown

    report["seconds"] = 1.0
    write_markdown(report, tmp_path / "BENCHMARKS.md", "chart.png")
    text = (tmp_path / "BENCHMARKS.md").read_text()
    assert "| memory counter / ceiling |" in text and "## The session layer alone" in text
