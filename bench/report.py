"""Turns a benchmark report (bench/results/latest.json) into docs/BENCHMARKS.md and a chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SERVERS = ["ours-memory", "ours-memcached", "express-memory", "express-memcached"]
LABELS = {
    "ours-memory": "this server, memory store",
    "ours-memcached": "this server, memcached",
    "express-memory": "express-session, MemoryStore",
    "express-memcached": "express-session, connect-memcached",
    "ours-delayed": "this server, memcached + 20 ms",
}
SCENARIO_LABELS = {
    "ceiling": "ceiling (sessionless /livez)",
    "counter": "page counter (GET /api)",
    "balance": "logged in, read-only (GET /api/balance)",
}
COLOURS = {
    "ours-memory": "#2456d6",
    "ours-memcached": "#7aa2f7",
    "express-memory": "#c2410c",
    "express-memcached": "#f4a261",
}


def _find(report: dict[str, Any], server: str, scenario: str, concurrency: int) -> dict[str, Any] | None:
    return next(
        (
            r
            for r in report["results"]
            if (r["server"], r["scenario"], r["concurrency"]) == (server, scenario, concurrency)
        ),
        None,
    )


def write_chart(report: dict[str, Any], path: Path) -> None:
    """Requests per second at the highest concurrency, per scenario and server, with the spread."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    top = max(report["settings"]["concurrency"])
    servers = [s for s in SERVERS if any(r["server"] == s for r in report["results"])]
    scenarios = list(SCENARIO_LABELS)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    width = 0.8 / len(servers)
    for i, server in enumerate(servers):
        xs, heights, low, high = [], [], [], []
        for j, scenario in enumerate(scenarios):
            r = _find(report, server, scenario, top)
            if r is None:
                continue
            xs.append(j + (i - (len(servers) - 1) / 2) * width)
            heights.append(r["rps"])
            low.append(r["rps"] - r["rps_min"])
            high.append(r["rps_max"] - r["rps"])
        left.bar(xs, heights, width, yerr=[low, high], capsize=3, label=LABELS[server], color=COLOURS[server])
    left.set_xticks(range(len(scenarios)), [SCENARIO_LABELS[s].split(" (")[0] for s in scenarios])
    left.set_ylabel("requests per second (median, bars: min-max)")
    left.set_title(f"Throughput at {top} connections")
    left.legend(fontsize=8, loc="upper right")
    left.grid(axis="y", alpha=0.3)

    for server in servers:
        concurrencies = sorted({r["concurrency"] for r in report["results"] if r["server"] == server})
        values = [_find(report, server, "counter", c) for c in concurrencies]
        right.plot(
            concurrencies,
            [v["p99_ms"] if v else None for v in values],
            marker="o",
            label=LABELS[server],
            color=COLOURS[server],
        )
    right.set_xlabel("connections")
    right.set_ylabel("p99 latency, ms")
    right.set_title("Page counter: p99 latency")
    right.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pinning(report: dict[str, Any]) -> str:
    machine = report["machine"]
    if not machine.get("server_cpus"):
        return ""
    return (
        f", each server under test pinned to CPU {', '.join(map(str, machine['server_cpus']))} and wrk, "
        f"memcached and the delaying proxy to CPU {', '.join(map(str, machine['load_cpus']))}"
    )


def _target_runs(settings: dict[str, Any]) -> str:
    runs = settings.get("target_runs", settings["runs"])
    if runs == settings["runs"]:
        return ""
    return f" ({runs} runs at {max(settings['concurrency'])} connections, where the targets are read)"


def _ratio_cell(found: tuple[float, list[float]] | None) -> str:
    return f"{found[0]:.3f} ({found[1][0]:.2f}-{found[1][1]:.2f})" if found else ""


def _cpu_section(report: dict[str, Any]) -> list[str]:
    rows = report.get("cpu")
    if not rows:
        return []
    top = max(report["settings"]["concurrency"])
    lines = [
        f"## Server CPU per request ({top} connections)",
        "",
        "The server process's CPU time (user and system, from /proc) over each run, per request: on its "
        "main thread (the IOLoop) and on its other threads (the memcached store's workers), and how busy "
        "it kept its core (1.00 is all of it). Medians of the runs; the ratios are paired per round like "
        "the targets, spread in brackets. In each round the throughput ratio is the product of the other "
        "two: a route loses to the ceiling either by the CPU it spends or by leaving its core idle "
        "(waiting).",
        "",
        "| server | scenario | CPU µs per request | IOLoop thread | other threads | core busy "
        "| ceiling CPU / route CPU | busy / ceiling's | throughput / ceiling |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {LABELS.get(r['server'], r['server'])} | {SCENARIO_LABELS[r['scenario']]} | {r['cpu_us']:.0f} | "
            f"{r['loop_us']:.0f} | {r['others_us']:.0f} | {r['busy']:.2f} | {_ratio_cell(r.get('cpu_ratio'))} | "
            f"{_ratio_cell(r.get('busy_ratio'))} | {_ratio_cell(r.get('rps_ratio'))} |"
        )
    return [*lines, ""]


# Sections other scripts write into BENCHMARKS.md (bench/abuse.py, bench/stores.py): a full run keeps them.
ABUSE_SECTION = "## Under abuse"
# Written by hand: how the benchmark works, earlier runs' figures, paired measurements of changes.
HISTORY_SECTION = "## How the benchmark runs, and earlier runs"
STORES_SECTION = "## Redis beside memcached"
KEPT_SECTIONS = (ABUSE_SECTION, STORES_SECTION, HISTORY_SECTION)


def _section_bounds(lines: list[str], heading: str) -> tuple[int, int] | None:
    if heading not in lines:
        return None
    start = lines.index(heading)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return start, end


def section(text: str, heading: str) -> str | None:
    """The section of markdown ``text`` under ``heading`` (to the next ``## `` heading), or None."""
    lines = text.splitlines()
    bounds = _section_bounds(lines, heading)
    return None if bounds is None else "\n".join(lines[bounds[0] : bounds[1]]).rstrip() + "\n"


def replace_section(text: str, heading: str, new: str) -> str:
    """``text`` with its section under ``heading`` replaced by ``new`` (appended if there is none)."""
    lines = text.splitlines()
    bounds = _section_bounds(lines, heading)
    if bounds is None:
        return text.rstrip("\n") + "\n\n" + new.rstrip("\n") + "\n"
    return "\n".join([*lines[: bounds[0]], *new.rstrip("\n").splitlines(), "", *lines[bounds[1] :]]).rstrip("\n") + "\n"


def kept_sections(path: Path) -> list[str]:
    """The sections of the BENCHMARKS.md at ``path`` that other scripts wrote (`KEPT_SECTIONS`)."""
    if not path.exists():
        return []
    text = path.read_text()
    lines = text.splitlines()
    # In the order the file has them: a regeneration leaves them as they were.
    present = sorted((lines.index(heading), heading) for heading in KEPT_SECTIONS if heading in lines)
    return [found for _, heading in present if (found := section(text, heading))]


def write_markdown(report: dict[str, Any], path: Path, chart_name: str) -> None:
    kept = kept_sections(path)
    s = report["settings"]
    lines = [
        "# Benchmarks",
        "",
        "Written by `bench/run.py` (see the README, Benchmarks). Every figure is the median of "
        f"{s['runs']} runs of {s['duration_s']:g} s each{_target_runs(s)}; the spread is the lowest and "
        "highest run. wrk with "
        f"{s['wrk_threads']} thread rotates through {s['browsers_per_kind']} real browsers' cookies per "
        "server (anonymous ones for the counter and the ceiling, logged-in ones for the balance). Server, "
        "memcached and wrk share one machine of "
        f"{report['machine']['cpus']} cores (Python {report['machine']['python']}){_pinning(report)}; run on "
        f"{report['when']}, {report['seconds']:.0f} s in all.",
        "",
        f"![Throughput and latency]({chart_name})",
        "",
        "## Targets",
        "",
        "A ratio is the median of the rounds' own ratios: each round takes one concurrency at a time and "
        "runs each server's scenarios back to back, so a slow stretch of this shared machine touches both "
        "sides of a ratio; the spread is the lowest and highest round. The stall is the median of "
        "several expiries, its spread their lowest and highest.",
        "",
        "| target | measured | spread | goal | |",
        "|---|---|---|---|---|",
    ]
    for t in report["targets"]:
        spread = "-".join(str(v) for v in t["spread"]) if "spread" in t else ""
        verdict = "met" if t["met"] else "**missed**"
        lines.append(f"| {t['target']} | {t['value']} | {spread} | {t['goal']} | {verdict} |")
    lines += ["", "## All figures", ""]
    for concurrency in s["concurrency"]:
        lines += [
            f"### {concurrency} connection{'s' if concurrency > 1 else ''}",
            "",
            "| server | scenario | req/s | spread | p50 ms | p99 ms | of this server's ceiling |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in report["results"]:
            if r["concurrency"] != concurrency:
                continue
            ceiling = _find(report, r["server"], "ceiling", concurrency)
            share = f"{r['rps'] / ceiling['rps']:.2f}" if ceiling and r["scenario"] != "ceiling" else ""
            lines.append(
                f"| {LABELS.get(r['server'], r['server'])} | {SCENARIO_LABELS[r['scenario']]} | {r['rps']:.0f} | "
                f"{r['rps_min']:.0f}-{r['rps_max']:.0f} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {share} |"
            )
        lines.append("")
    lines += _cpu_section(report)
    memory = report.get("memory_store")
    if memory:
        lines += [
            "## The memory store at scale",
            "",
            f"{memory['sessions']:,} sessions of the reference app's shape (page counter and logged-in user): "
            f"{memory['rss_bytes_per_session']:.0f} bytes of resident memory per session "
            f"({memory['rss_mib_total']} MiB). Expiring {memory['expired']:,} of them took "
            f"{memory['sweep_seconds'] * 1000:.0f} ms in {memory['loop_turns_during_sweep']:.0f} slices; the longest "
            f"the event loop waited meanwhile was {memory['longest_stall_ms']} ms"
            + (
                f" (median of {len(memory['waves'])} such expiries, spread "
                f"{memory['longest_stall_spread_ms'][0]}-{memory['longest_stall_spread_ms'][1]} ms)."
                if "waves" in memory
                else "."
            ),
            "",
        ]
    alone = report.get("session_layer_us")
    if alone:
        lines += [
            "## The session layer alone",
            "",
            "`bench/session_layer.py`: each step of a page-counter hit on the memory store in a tight loop, "
            "without HTTP (warm caches, no contention: a floor for what it costs inside a loaded server).",
            "",
            "| step | µs per call |",
            "|---|---|",
            *[f"| {step.replace('_', ' ')} | {us} |" for step, us in alone.items()],
            "",
        ]
    counted = report.get("instructions")
    if counted:
        lines += [
            "## Instructions per request",
            "",
            "`bench/instructions.py`: the instructions the whole server process executes per request under "
            f"valgrind's callgrind, {report.get('instructions_connections', 1)} connection(s) sending at once "
            "(every connection sends, then every answer is read, so memcached batches hold a request of "
            "each), after a warm-up. Unlike requests per second on this shared machine, these repeat to "
            "about 2% from run to run on the memory store and 5% on memcached (whose batches under valgrind "
            "are not always whole; 1% at one connection), so they show the ratios that the throughput "
            "figures above scatter around; they leave out what cache misses and the machine's other work cost.",
            "",
            "| route | " + " | ".join(f"{store} store, thousands | ceiling / route" for store in counted) + " |",
            "|---|" + "---|---|" * len(counted),
        ]
        for route in ("ceiling", "counter", "balance"):
            cells = []
            for figures in counted.values():
                thousands = figures.get(route)
                share = f"{figures['ceiling'] / thousands:.3f}" if thousands and route != "ceiling" else ""
                cells += [f"{thousands:,.1f}" if thousands else "", share]
            lines.append(f"| {route} | " + " | ".join(cells) + " |")
        lines.append("")
    profiles = report.get("profile")
    if profiles:
        lines += [
            "## Where the time goes",
            "",
            "The page counter at the highest concurrency against a server under cProfile (the IOLoop thread; "
            "profiling slows it, so read shares, not absolute times). Share of busy time by area:",
            "",
        ]
        areas = sorted({a for p in profiles.values() for a in p["areas"]})
        lines += ["| area | " + " | ".join(f"{k} store" for k in profiles) + " |", "|---|" + "---|" * len(profiles)]
        for a in sorted(areas, key=lambda a: -max(p["areas"].get(a, 0) for p in profiles.values())):
            lines.append(f"| {a} | " + " | ".join(f"{p['areas'].get(a, 0):.1f} %" for p in profiles.values()) + " |")
        for name, p in profiles.items():
            lines += [
                "",
                f"Most expensive functions, {name} store ({p['busy_us_per_request']} µs busy per request "
                "under the profiler):",
                "",
                "| function | calls | share |",
                "|---|---|---|",
            ]
            lines += [f"| `{f['function']}` | {f['calls']} | {f['percent']} % |" for f in p["top_functions"][:10]]
        lines.append("")
    notes = report.get("notes")
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += kept
    path.write_text("\n".join(lines))
