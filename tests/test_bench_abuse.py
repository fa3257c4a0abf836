"""bench/abuse.py's machinery: a short flood round against the real server, and its section of
BENCHMARKS.md, which a full benchmark run keeps. No test asserts a timing."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.abuse import markdown
from bench.report import ABUSE_SECTION, kept_sections, replace_section, section
from tests.services import ROOT

pytestmark = pytest.mark.slow  # the benchmark's machinery

DOC = "# Benchmarks\n\nintro\n\n## Targets\n\n| a | b |\n\n## Notes\n\nlast\n"


def test_the_abuse_section_is_appended_then_replaced_and_the_rest_kept():
    appended = replace_section(DOC, ABUSE_SECTION, f"{ABUSE_SECTION}\n\nfirst figures\n")
    assert appended.startswith(DOC.rstrip("\n"))
    assert section(appended, ABUSE_SECTION) == f"{ABUSE_SECTION}\n\nfirst figures\n"
    middle = DOC.replace("## Notes", f"{ABUSE_SECTION}\n\nold figures\n\n## Notes")
    replaced = replace_section(middle, ABUSE_SECTION, f"{ABUSE_SECTION}\n\nnew figures\n")
    assert "old figures" not in replaced
    assert replaced.index("## Targets") < replaced.index("new figures") < replaced.index("## Notes\n\nlast")
    assert section(DOC, ABUSE_SECTION) is None


def test_a_full_benchmark_run_keeps_the_abuse_section(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    assert kept_sections(path) == []
    path.write_text(replace_section(DOC, ABUSE_SECTION, f"{ABUSE_SECTION}\n\nfigures\n"))
    assert kept_sections(path) == [f"{ABUSE_SECTION}\n\nfigures\n"]


def test_a_short_flood_round_runs_and_renders(tmp_path):
    result = subprocess.run(
        [sys.executable, "bench/abuse.py", "--parts", "flood", "--flood", "5", "--rounds", "1", "--settle", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    figures = json.loads(result.stdout[result.stdout.index("{\n") :])
    assert figures["flood"]["flood"] == 5 and figures["flood"]["p50_s"] > 0
    text = markdown(figures, "now")
    assert text.startswith(ABUSE_SECTION) and "p50 **" in text
    guesses = {"pair, defaults": {"attempts": 30, "checked": 10, "refused_429": 20, "checked_per_s": 0.5}}
    assert "| one address, one account | defaults | 30 | 10 | 20 | 0.5 |" in markdown(
        {**figures, "guesses": guesses}, "now"
    )
