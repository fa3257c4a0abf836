"""Write the demo client for a page served apart from its API.

    python3 deploy/render_client.py --api-origin http://localhost:3000 --out /tmp/demo-client

Copies ``static/`` into ``--out``, then writes the two files that name the API: ``config.js``
(where app.js sends every call) and ``index.html``, whose Content-Security-Policy then allows
connections to that origin and to no other. Serve ``--out`` with any file server; the API must
list the page's origin in ``CORS_ORIGINS``. A page on its API's own origin (the dev server, the
deploy's nginx) needs none of this: ``static/`` as shipped calls the page's own origin.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"
# The shipped page's connect-src, replaced by the API origin; rendering refuses a page without it.
SHIPPED_CONNECT_SRC = "connect-src 'self';"
ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?/?", re.IGNORECASE)
DEFAULT_PORTS = {"http": 80, "https": 443}


def api_origin(value: str) -> str:
    """``value`` spelled as browsers spell an origin: lower case, no default port, no slash.

    Anything but ``scheme://host[:port]`` raises ValueError: a path or a user name cannot be
    named in connect-src, and a quote, space or semicolon would rewrite the policy.
    """
    match = ORIGIN.fullmatch(value)
    if match is None:
        raise ValueError(f"the API origin must look like https://api.example.com[:port], not {value!r}")
    scheme, host, port = match.group(1).lower(), match.group(2).lower(), match.group(3)
    if port is None or int(port) == DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    if not 0 < int(port) < 65536:
        raise ValueError(f"the API origin's port must be 1-65535, not {port}")
    return f"{scheme}://{host}:{int(port)}"


def render(*, api: str, out: Path) -> str:
    """Write the client for the API at ``api`` into ``out``; return the origin as written."""
    origin = api_origin(api)
    if out.resolve() == STATIC.resolve():
        raise ValueError("--out must not be static/ itself: the shipped files serve the same-origin setups")
    page = (STATIC / "index.html").read_text()
    if page.count(SHIPPED_CONNECT_SRC) != 1:
        raise ValueError(f"static/index.html must hold {SHIPPED_CONNECT_SRC!r} exactly once")
    shutil.copytree(STATIC, out, dirs_exist_ok=True)
    (out / "index.html").write_text(page.replace(SHIPPED_CONNECT_SRC, f"connect-src {origin};"))
    settings = json.dumps({"api": origin, "demoUser": None})
    (out / "config.js").write_text(
        f"// Written by deploy/render_client.py; index.html's connect-src names the same origin.\n"
        f"window.SESSION_DEMO_CONFIG = {settings};\n"
    )
    return origin


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the demo client for a page served apart from its API.")
    parser.add_argument("--api-origin", required=True, help="the API's origin, such as http://localhost:3000")
    parser.add_argument("--out", required=True, type=Path, help="the folder to write (created if need be)")
    args = parser.parse_args(argv)
    try:
        origin = render(api=args.api_origin, out=args.out)
    except ValueError as error:
        parser.error(str(error))
    sys.stderr.write(f"wrote {args.out}: calls and connect-src {origin}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
