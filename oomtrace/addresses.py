"""Addresses as people type them: HOST:PORT, [IPv6]:PORT or unix:PATH.
Checked where they are typed, so a bad port is named as a bad port rather
than reported later as an unreachable or "not local" collector."""

from __future__ import annotations


class AddressError(ValueError):
    """An address that cannot be dialled or served; the message says why."""


def check(address: str, *, any_port: bool = False) -> str:
    """The address unchanged when it is HOST:PORT ([::1]:PORT for IPv6) or
    unix:PATH; any_port: port 0 (any free one) is allowed too (a --listen)."""
    if address.startswith("unix:"):
        if not address[5:]:
            raise AddressError(f"{address!r} names no socket path (unix:/run/oomtrace.sock)")
        return address
    host, colon, port = address.rpartition(":")
    if not colon or (host.startswith("[") != host.endswith("]")) or ("]" in port):
        raise AddressError(f"{address!r} has no port: give HOST:PORT, e.g. {address}:50051")
    if not host:
        raise AddressError(f"{address!r} has no host: give HOST:PORT, e.g. 127.0.0.1{address}")
    if ":" in host and not host.startswith("["):
        raise AddressError(f"{address!r}: an IPv6 address goes in brackets, e.g. [::1]:50051")
    if not port.isdigit():
        raise AddressError(f"{address!r}: the port {port!r} is not a number")
    low = 0 if any_port else 1
    if not low <= int(port) <= 65535:
        raise AddressError(f"{address!r}: the port {port} is not in {low}..65535")
    return address


def check_list(text: str) -> str:
    """Several addresses, comma-separated (the first that answers is used)."""
    parts = [p.strip() for p in text.split(",")]
    if not all(parts):
        raise AddressError(f"{text!r} has an empty address in its list")
    for p in parts:
        check(p)
    return ",".join(parts)
