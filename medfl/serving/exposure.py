"""Whether a listening address is reachable only from this machine (loopback)."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str | None) -> bool:
    """True for ``localhost`` and loopback IP addresses (``127.0.0.0/8``, ``::1``, and
    IPv4-mapped ``::ffff:127.x.x.x``); False for anything else, including ``0.0.0.0``,
    ``::`` (every interface) and host names, which may resolve to a network interface."""
    if host is None:
        return False
    if host.strip().lower() == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return bool((mapped or address).is_loopback)
