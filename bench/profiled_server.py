"""server.py under cProfile, for the benchmark's "where the time goes" summary.

    python bench/profiled_server.py STATS.json [server.py arguments...]

Profiles the IOLoop thread only (the memcached worker threads wait on sockets and are not the
bottleneck), between SIGUSR1 and SIGUSR2, so setting up the browsers does not count. SIGUSR2
writes the summary to STATS.json: exclusive time by area, and the most expensive functions.
"""

from __future__ import annotations

import cProfile
import json
import pstats
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# Area of a function, by where it is defined (first match wins).
AREAS = [
    ("cookie signing (HMAC)", ("signed_value", "signature", "_decode_fields", "_consume_field", "hmac")),
    ("logging", ("/logging/", "/handlers/logging_setup.py")),
    ("session layer (ours)", ("/handlers/", "/stores/")),
    ("JSON", ("/json/", "_json")),
    ("memcached client hand-off", ("/pymemcache/", "/concurrent/", "/threading.py", "run_in_executor")),
    ("socket I/O", ("method 'send'", "method 'recv", "socket")),
    ("event loop (asyncio)", ("/asyncio/", "/selectors.py", "epoll", "_contextvars")),
    ("Tornado HTTP and routing", ("/tornado/", "/http/cookies.py", "/re/", "re.Pattern", "isinstance")),
]


def area(key: tuple[str, int, str]) -> str:
    filename, _, name = key
    text = f"{filename}:{name}"
    for label, needles in AREAS:
        if any(n in text for n in needles):
            return label
    return "other"


def summarise(profile: cProfile.Profile) -> dict[str, object]:
    stats = pstats.Stats(profile)
    raw = stats.stats  # type: ignore[attr-defined]
    idle = sum(v[2] for k, v in raw.items() if "poll" in k[2] and "epoll" in k[2])
    total = sum(v[2] for v in raw.values()) - idle
    by_area: dict[str, float] = {}
    for key, value in raw.items():
        if "poll" in key[2] and "epoll" in key[2]:
            continue  # waiting for the network: not work
        by_area[area(key)] = by_area.get(area(key), 0.0) + value[2]
    top = sorted(raw.items(), key=lambda kv: kv[1][2], reverse=True)
    requests = next((v[0] for k, v in raw.items() if k[2] == "_execute"), 0)
    return {
        "busy_seconds": round(total, 3),
        "requests": requests,
        "busy_us_per_request": round(total / requests * 1e6, 1) if requests else None,
        "areas": {k: round(v / total * 100, 1) for k, v in sorted(by_area.items(), key=lambda kv: -kv[1])},
        "top_functions": [
            {
                "function": f"{Path(k[0]).name}:{k[1]}({k[2]})" if k[0] != "~" else k[2],
                "calls": v[1],
                "percent": round(v[2] / total * 100, 1),
            }
            for k, v in top
            if not ("poll" in k[2] and "epoll" in k[2])
        ][:15],
    }


def main() -> int:
    stats_path = Path(sys.argv[1])
    sys.argv = ["server.py", *sys.argv[2:]]
    import server

    profile = cProfile.Profile()
    # Only the measured load counts: SIGUSR1 starts the profile, SIGUSR2 ends it and writes it.
    signal.signal(signal.SIGUSR1, lambda *_: profile.enable())

    def finish(*_: object) -> None:
        profile.disable()
        stats_path.write_text(json.dumps(summarise(profile), indent=2))

    signal.signal(signal.SIGUSR2, finish)
    return server.main()


if __name__ == "__main__":
    sys.exit(main())
