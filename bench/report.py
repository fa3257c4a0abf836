"""Turns a benchmark report (bench/results/latest.json) into docs/BENCHMARKS.md and a chart."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from bench.figures import find, in_mode, mode_of, modes_of

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
    return find(report["results"], server, scenario, concurrency)


def _views(report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(mode, the report with that mode's results only), for each mode the report was measured in."""
    return [(mode, {**report, "results": in_mode(report["results"], mode)}) for mode in modes_of(report)]


def _servers(report: dict[str, Any]) -> list[str]:
    return [s for s in SERVERS if any(r["server"] == s for r in report["results"])]


def _throughput_panel(axes: Any, view: dict[str, Any], mode: str) -> None:
    top = max(view["settings"]["concurrency"])
    servers, scenarios = _servers(view), list(SCENARIO_LABELS)
    width = 0.8 / max(1, len(servers))
    for i, server in enumerate(servers):
        xs, heights, low, high = [], [], [], []
        for j, scenario in enumerate(scenarios):
            r = _find(view, server, scenario, top)
            if r is None:
                continue
            xs.append(j + (i - (len(servers) - 1) / 2) * width)
            heights.append(r["rps"])
            low.append(r["rps"] - r["rps_min"])
            high.append(r["rps_max"] - r["rps"])
        axes.bar(xs, heights, width, yerr=[low, high], capsize=3, label=LABELS[server], color=COLOURS[server])
    axes.set_xticks(range(len(scenarios)), [SCENARIO_LABELS[s].split(" (")[0] for s in scenarios])
    axes.set_ylabel("requests per second (median, bars: min-max)")
    axes.set_title(f"Throughput at {top} connections, {mode}")
    axes.legend(fontsize=8, loc="upper right")
    axes.grid(axis="y", alpha=0.3)


def _latency_panel(axes: Any, view: dict[str, Any], scenario: str, figure: str, title: str) -> None:
    for server in _servers(view):
        concurrencies = sorted({r["concurrency"] for r in view["results"] if r["server"] == server})
        values = [_find(view, server, scenario, c) for c in concurrencies]
        axes.plot(
            concurrencies,
            [v[figure] if v else None for v in values],
            marker="o",
            label=LABELS[server],
            color=COLOURS[server],
        )
    axes.set_xlabel("connections")
    axes.set_ylabel(f"{figure.removesuffix('_ms')} latency, ms")
    axes.set_title(title)
    axes.grid(alpha=0.3)


def write_chart(report: dict[str, Any], path: Path) -> None:
    """Per mode: requests per second at the highest concurrency, per scenario and server, with the
    spread; the page counter's p99 latency against concurrency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    views = _views(report)
    fig, rows = plt.subplots(
        len(views), 2, figsize=(12, 4.8 * len(views)), gridspec_kw={"width_ratios": [3, 2]}, squeeze=False
    )
    for (mode, view), (left, right) in zip(views, rows, strict=True):
        _throughput_panel(left, view, mode)
        _latency_panel(right, view, "counter", "p99_ms", f"Page counter: p99 latency, {mode}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _tick(value: float, _position: float) -> str:
    """A log axis's label: 1, 2 and 5 times a power of ten, written plainly (0.2, 5, 20)."""
    if value <= 0:
        return ""
    mantissa = value / 10 ** math.floor(math.log10(value))
    return f"{value:g}" if any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5)) else ""


def write_latency_chart(report: dict[str, Any], path: Path) -> None:
    """Per mode: median (p50) latency against concurrency for the page counter and the logged-in
    read, every server, on logarithmic axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    views = _views(report)
    fig, rows = plt.subplots(len(views), 2, figsize=(12, 4.4 * len(views)), squeeze=False)
    for (mode, view), panels in zip(views, rows, strict=True):
        for axes, scenario in zip(panels, ("counter", "balance"), strict=True):
            title = f"{SCENARIO_LABELS[scenario]}: p50 latency, {mode}"
            _latency_panel(axes, view, scenario, "p50_ms", title)
            axes.set_xscale("log")
            axes.set_yscale("log")
            concurrencies = view["settings"]["concurrency"]
            axes.set_xticks(concurrencies, [str(c) for c in concurrencies])
            axes.xaxis.set_minor_formatter(NullFormatter())
            for formatter in (axes.yaxis.set_major_formatter, axes.yaxis.set_minor_formatter):
                formatter(FuncFormatter(_tick))
    rows[0][0].legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _pinning(report: dict[str, Any]) -> str:
    machine, modes = report["machine"], modes_of(report)
    pinned = ""
    if "pinned" in modes and machine.get("server_cpus"):
        pinned = (
            f"pinned (each server under test on CPU {', '.join(map(str, machine['server_cpus']))} and wrk, "
            f"memcached and the delaying proxy on CPU {', '.join(map(str, machine['load_cpus']))})"
        )
    unpinned = "unpinned (every process left to the scheduler)" if "unpinned" in modes else ""
    both = " and ".join(p for p in (pinned, unpinned) if p)
    return f", measured {both}" if both else ""


def _target_runs(settings: dict[str, Any]) -> str:
    runs = settings.get("target_runs", settings["runs"])
    if runs == settings["runs"]:
        return ""
    top = max(settings["concurrency"])
    where = f"1 and {top} connections" if 1 in settings["concurrency"] and top != 1 else f"{top} connections"
    return f" ({runs} runs at {where}, where most targets are read)"


def _how_to_read(report: dict[str, Any]) -> list[str]:
    if len(modes_of(report)) < 2:
        return []
    return [
        "## How to read: pinned and unpinned",
        "",
        "Every figure and target below is given per mode. **Pinned**: each server under test has a core "
        "to itself and wrk, memcached and this script share the other, so a figure measures the server "
        "and not the scheduler's choices (what the earlier runs published). **Unpinned**: nothing is "
        "pinned, as on a host nobody tuned; the load generator, memcached and the server compete for both "
        "cores, and the scheduler may move them between requests. Compare servers within a mode, not a "
        "figure across modes; a target met in one mode only is met where that mode's conditions hold. "
        "The raw round trip under the floor is timed on one raw socket from where the servers run: "
        "pinned, from the servers' core to memcached on the other, so it includes the cross-core "
        "wake-ups every server's round trip pays.",
        "",
    ]


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
        "it kept its core (1.00 is all of it; unpinned, a server may use more than one). Medians of the "
        "runs; the ratios are paired per round like the targets, spread in brackets. In each round the "
        "throughput ratio is the product of the other two: a route loses to the ceiling either by the CPU "
        "it spends or by leaving its core idle (waiting).",
        "",
        "| mode | server | scenario | CPU µs per request | IOLoop thread | other threads | core busy "
        "| ceiling CPU / route CPU | busy / ceiling's | throughput / ceiling |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {mode_of(r)} | {LABELS.get(r['server'], r['server'])} | {SCENARIO_LABELS[r['scenario']]} | "
            f"{r['cpu_us']:.0f} | {r['loop_us']:.0f} | {r['others_us']:.0f} | {r['busy']:.2f} | "
            f"{_ratio_cell(r.get('cpu_ratio'))} | {_ratio_cell(r.get('busy_ratio'))} | "
            f"{_ratio_cell(r.get('rps_ratio'))} |"
        )
    return [*lines, ""]


def _targets_section(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Targets",
        "",
        "A ratio is the median of the rounds' own ratios: each round takes one concurrency at a time and "
        "runs each server's scenarios back to back, so a slow stretch of this shared machine touches both "
        "sides of a ratio; the spread is the lowest and highest round. A latency's spread is its runs' "
        "lowest and highest p50. The stall is the median of several expiries, its spread their lowest and "
        "highest. Ours against express-session is read at every concurrency (never behind), and at one "
        "connection on memcached against a higher goal (the lead); the memory store at scale is measured "
        "once, not per mode.",
        "",
        "| mode | target | measured | spread | goal | |",
        "|---|---|---|---|---|---|",
    ]
    for t in report["targets"]:
        spread = "-".join(str(v) for v in t["spread"]) if t.get("spread") else ""
        verdict = "met" if t["met"] else "**missed**"
        mode = t["mode"] if "mode" in t else mode_of(t)  # None: measured once
        lines.append(f"| {mode or 'once'} | {t['target']} | {t['value']} | {spread} | {t['goal']} | {verdict} |")
    return [*lines, ""]


def _floor_section(report: dict[str, Any]) -> list[str]:
    rows = report.get("floor")
    if not rows:
        return []
    lines = [
        "## Distance to the floor",
        "",
        "This server on memcached at one connection, beside the least it could take: the same scenario's "
        "p50 on the memory store plus the round trips to memcached it needs times the raw round trip "
        "(the median of thousands of `version` exchanges on one raw socket, from the benchmark's "
        "process, in the same mode). The counter needs one (a `cas` against the copy of the session this "
        "process kept when it last wrote it, the key read back in the same send); the logged-in read "
        "one (a `gets`; its touch goes out at most once per touch interval). What lies above the floor "
        "is the store client's own cost.",
        "",
        "| mode | scenario | round trips | raw round trip ms | memory store p50 ms | floor ms | memcached p50 ms "
        "| above the floor ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {SCENARIO_LABELS[r['scenario']]} | {r['round_trips']} | {r['rtt_ms']:.4f} | "
            f"{r['memory_p50_ms']:.3f} | {r['floor_ms']:.3f} | {r['p50_ms']:.3f} | {r['above_floor_ms']:+.3f} |"
        )
    return [*lines, ""]


def _figures_section(report: dict[str, Any]) -> list[str]:
    lines = ["## All figures", ""]
    for mode, view in _views(report):
        for concurrency in report["settings"]["concurrency"]:
            lines += [
                f"### {mode}, {concurrency} connection{'s' if concurrency > 1 else ''}",
                "",
                "| server | scenario | req/s | spread | p50 ms | p99 ms | of this server's ceiling |",
                "|---|---|---|---|---|---|---|",
            ]
            for r in view["results"]:
                if r["concurrency"] != concurrency:
                    continue
                ceiling = _find(view, r["server"], "ceiling", concurrency)
                share = f"{r['rps'] / ceiling['rps']:.2f}" if ceiling and r["scenario"] != "ceiling" else ""
                lines.append(
                    f"| {LABELS.get(r['server'], r['server'])} | {SCENARIO_LABELS[r['scenario']]} | "
                    f"{r['rps']:.0f} | {r['rps_min']:.0f}-{r['rps_max']:.0f} | {r['p50_ms']:.2f} | "
                    f"{r['p99_ms']:.2f} | {share} |"
                )
            lines.append("")
    return lines


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


def _intro(report: dict[str, Any], chart_name: str, latency_chart: str | None) -> list[str]:
    s = report["settings"]
    charts = [f"![Throughput and latency]({chart_name})", ""]
    if latency_chart:
        charts += [f"![Median latency against connections]({latency_chart})", ""]
    return [
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
        *charts,
    ]


def _memory_section(memory: dict[str, Any] | None) -> list[str]:
    if not memory:
        return []
    return [
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


def _session_layer_section(alone: dict[str, Any] | None) -> list[str]:
    if not alone:
        return []
    return [
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


def _instructions_section(report: dict[str, Any]) -> list[str]:
    counted = report.get("instructions")
    if not counted:
        return []
    lines = [
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
    return [*lines, ""]


def _profile_section(profiles: dict[str, Any] | None) -> list[str]:
    if not profiles:
        return []
    lines = [
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
    return [*lines, ""]


def write_markdown(report: dict[str, Any], path: Path, chart_name: str, latency_chart: str | None = None) -> None:
    """BENCHMARKS.md from ``report``, keeping the sections other scripts and people wrote there."""
    kept = kept_sections(path)
    lines = _intro(report, chart_name, latency_chart) + _how_to_read(report) + _targets_section(report)
    lines += _floor_section(report) + _figures_section(report) + _cpu_section(report)
    lines += _memory_section(report.get("memory_store")) + _session_layer_section(report.get("session_layer_us"))
    lines += _instructions_section(report) + _profile_section(report.get("profile"))
    notes = report.get("notes")
    if notes:
        lines += ["## Notes", "", *notes, ""]
    lines += kept
    path.write_text("\n".join(lines))
