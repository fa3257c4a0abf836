"""Render the nginx site for the session server.

    python3 deploy/render_nginx.py --server-name example.com --app-ports 8001,8002 \
        --certificate /etc/letsencrypt/live/example.com/fullchain.pem \
        --certificate-key /etc/letsencrypt/live/example.com/privkey.pem \
        --static-root /srv/session-server/static > /etc/nginx/sites-available/session-server

Writes the site to standard output; ``proxy_params.conf`` is referenced from where it lies
(``--proxy-params`` to use a copy elsewhere).
"""

from __future__ import annotations

import argparse
import re
import string
import sys
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def render(
    *,
    server_name: str,
    app_ports: Sequence[int],
    certificate: str,
    certificate_key: str,
    static_root: str,
    http_listen: str = "80",
    https_listen: str = "443",
    proxy_params: str = str(HERE / "nginx" / "proxy_params.conf"),
) -> str:
    """The site configuration text for these values."""
    https_port = https_listen.rsplit(":", 1)[-1].split()[0]
    values = {
        "SERVER_NAME": server_name,
        "UPSTREAM_SERVERS": "\n".join(
            f"    server 127.0.0.1:{port} max_fails=1 fail_timeout=2s;" for port in app_ports
        ),
        "TLS_CERTIFICATE": certificate,
        "TLS_CERTIFICATE_KEY": certificate_key,
        "STATIC_ROOT": static_root,
        "HTTP_LISTEN": http_listen,
        "HTTPS_LISTEN": https_listen,
        "HTTPS_PORT_SUFFIX": "" if https_port == "443" else f":{https_port}",
        "PROXY_PARAMS": proxy_params,
    }
    template = (HERE / "nginx" / "session-server.conf.template").read_text()
    # Only ${NAME} placeholders are ours; nginx's own $variables pass through untouched.
    return string.Template(template).safe_substitute(values)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Render the nginx site for the session server.")
    parser.add_argument("--server-name", required=True, help="the site's host name, as in its certificate")
    parser.add_argument("--app-ports", required=True, help="comma-separated loopback ports of the app processes")
    parser.add_argument("--certificate", required=True, help="the TLS certificate chain file (PEM)")
    parser.add_argument("--certificate-key", required=True, help="the TLS certificate's private key file (PEM)")
    parser.add_argument("--static-root", required=True, help="the demo client's folder (static/), served at /")
    parser.add_argument(
        "--http-listen", default="80", help="nginx's listen for plain HTTP: a port or address:port (default: 80)"
    )
    parser.add_argument(
        "--https-listen", default="443", help="nginx's listen for HTTPS: a port or address:port (default: 443)"
    )
    parser.add_argument(
        "--proxy-params",
        default=str(HERE / "nginx" / "proxy_params.conf"),
        help="the proxy parameters file the site includes (default: deploy/nginx/proxy_params.conf)",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?", args.server_name):
        # The plain-HTTP redirect goes to this name: a list or a wildcard would not be one.
        parser.error("--server-name takes one host name (no list, wildcard or regex)")
    try:
        ports = [int(p) for p in args.app_ports.split(",") if p.strip()]
    except ValueError:
        parser.error("--app-ports takes comma-separated port numbers")
    sys.stdout.write(
        render(
            server_name=args.server_name,
            app_ports=ports,
            certificate=args.certificate,
            certificate_key=args.certificate_key,
            static_root=args.static_root,
            http_listen=args.http_listen,
            https_listen=args.https_listen,
            proxy_params=args.proxy_params,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
