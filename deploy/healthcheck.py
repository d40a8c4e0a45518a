"""The containers' health check: exit 0 when a local service answers HTTP, 1 otherwise.

``python deploy/healthcheck.py URL [--ca FILE] [--status CODE]``

Any HTTP reply counts unless ``--status`` names the one expected: the SuperLink's Fleet
listener answers 404 to every path that is not a Fleet route, and that reply already proves
that it accepts TLS connections and serves requests. ``--ca`` verifies an HTTPS service's
certificate with the consortium's CA (the SuperLink's certificate is valid for 127.0.0.1).
Standard library only: it runs every few seconds and must not import MedFL or torch.
"""

from __future__ import annotations

import argparse
import http.client
import ssl
import sys
import urllib.error
import urllib.request


def check(url: str, *, ca: str | None = None, status: int | None = None,
          timeout: float = 5.0) -> str | None:
    """None when ``url`` answers (with ``status``, if given); otherwise why not."""
    context = ssl.create_default_context(cafile=ca) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=context) as reply:
            code = reply.status
    except urllib.error.HTTPError as exc:  # a reply all the same
        code = exc.code
    except (OSError, ValueError, http.client.HTTPException) as exc:  # no HTTP answer
        return f"{url}: no answer ({exc})"
    if status is not None and code != status:
        return f"{url}: answered {code}, expected {status}"
    return None


def main(argv: list[str] | None = None) -> int:
    """The command line: 0 when the service answers, 1 (and why, on stderr) otherwise."""
    parser = argparse.ArgumentParser(prog="healthcheck", description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--ca", help="CA certificate that verifies an HTTPS service")
    parser.add_argument("--status", type=int, help="the HTTP status expected (default: any)")
    args = parser.parse_args(argv)
    problem = check(args.url, ca=args.ca, status=args.status)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
