"""Who the client is behind a reverse proxy: the X-Forwarded-For / -Proto trust rule.

Owns: deciding whether a peer is a trusted proxy, and reading the client address and
scheme out of X-Forwarded-For and X-Forwarded-Proto when it is.
Never: parses HTTP bytes (http11 does; the frontend calls this for a peer it trusts);
       performs I/O.

Each proxy appends the address it received the request from, so the list reads
client, proxy1, proxy2 ... and only the right end is written by proxies we trust:

    X-Forwarded-For: 6.6.6.6, 203.0.113.7, 10.0.0.2        peer 10.0.0.1 (trusted)
                     ^forged   ^client     ^trusted hop

Walking from the right, skipping trusted addresses, the first untrusted one is the
client; anything to its left may be forged by that client and is not believed.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable, Optional, Sequence, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]


def parse_address(text: str) -> Optional[IPAddress]:
    """"10.0.0.1", "10.0.0.1:5678", "::1", "[::1]:80" -> an address; anything else -> None.

    An IPv4-mapped IPv6 address (what a dual-stack socket reports) becomes plain IPv4,
    so it matches IPv4 proxy networks."""
    text = text.strip(" \t")
    if text.startswith("["):
        close = text.find("]")
        text = text[1:close] if close > 0 else ""
    elif text.count(":") == 1:
        text = text.partition(":")[0]  # IPv4 with a port, as some proxies send it
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _in_networks(address: IPAddress, networks: Sequence) -> bool:
    return any(address in network for network in networks)


def is_trusted(remote_addr: str, networks: Sequence) -> bool:
    """Is the peer at `remote_addr` one of the trusted proxies?"""
    if not networks:
        return False
    address = parse_address(remote_addr)
    return address is not None and _in_networks(address, networks)


def client_address(peer: str, forwarded_for: Iterable[str], networks: Sequence) -> str:
    """The right-most X-Forwarded-For address that is not itself a trusted proxy.

    `forwarded_for` holds the values of every X-Forwarded-For line in order. If every
    listed address is trusted, the left-most is the client. An entry that is not an
    address stops the walk: the last address verified so far is used (the peer when
    the very first entry is bad), because nothing beyond garbage can be believed."""
    hops = [hop for value in forwarded_for for hop in value.split(",")]
    client = peer
    for hop in reversed(hops):
        address = parse_address(hop)
        if address is None:
            return client
        client = str(address)
        if not _in_networks(address, networks):
            return client
    return client


def client_scheme(default: str, forwarded_proto: Iterable[str]) -> str:
    """The scheme the trusted proxy reports: the right-most X-Forwarded-Proto element,
    if it is http or https; otherwise `default`."""
    elements = [element for value in forwarded_proto for element in value.split(",")]
    if elements:
        scheme = elements[-1].strip(" \t").lower()
        if scheme in ("http", "https"):
            return scheme
    return default


def client_of(headers: Sequence, peer: str, networks: Sequence) -> tuple:
    """(client address, scheme) of a request from a trusted proxy at `peer`, read from its
    X-Forwarded-For and X-Forwarded-Proto fields (every line of each, in order)."""
    forwarded_for = []
    forwarded_proto = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == "x-forwarded-for":
            forwarded_for.append(value)
        elif lowered == "x-forwarded-proto":
            forwarded_proto.append(value)
    return client_address(peer, forwarded_for, networks), client_scheme("http", forwarded_proto)
