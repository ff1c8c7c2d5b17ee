"""Which addresses a guest may reach: global unicast only, never this host.

`ipaddress.is_global` alone is not enough on Python 3.11 (it calls `fec0::/10`, `ff02::1`,
6to4 and NAT64 global), so IANA's special-purpose registries are listed here as well, and the
IPv6 forms that carry an IPv4 address (mapped, compatible, NAT64, 6to4, Teredo) are decoded:
a translator or a tunnel relay would deliver them to that IPv4 address, which may be the
host's or a private one. Those forms are refused before any connection is tried.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import socket
from pathlib import Path

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# IANA IPv4 Special-Purpose Address Registry (RFC 6890 and later), plus multicast, class E.
SPECIAL_IPV4 = tuple(
    ipaddress.IPv4Network(n)
    for n in (
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.0.0.0/24",
        "192.0.2.0/24",
        "192.31.196.0/24",
        "192.52.193.0/24",
        "192.88.99.0/24",
        "192.168.0.0/16",
        "192.175.48.0/24",
        "198.18.0.0/15",
        "198.51.100.0/24",
        "203.0.113.0/24",
        "224.0.0.0/4",
        "240.0.0.0/4",
    )
)

# IANA IPv6 Special-Purpose Address Registry, plus site-local, multicast.
SPECIAL_IPV6 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::/128",
        "::1/128",
        "64:ff9b:1::/48",
        "100::/64",
        "2001::/23",
        "2001:db8::/32",
        "3fff::/20",
        "5f00::/16",
        "fc00::/7",
        "fe80::/10",
        "fec0::/10",
        "ff00::/8",
    )
)

IPV4_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")
IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")
NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
SIX_TO_FOUR = ipaddress.IPv6Network("2002::/16")
TEREDO = ipaddress.IPv6Network("2001::/32")


def embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries, and the form's name; None if it carries none."""
    if address in IPV4_MAPPED:
        assert address.ipv4_mapped is not None
        return "IPv4-mapped", address.ipv4_mapped
    if address in IPV4_COMPATIBLE:
        return "IPv4-compatible", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in NAT64:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    return None


def _ipv4_refusal(address: ipaddress.IPv4Address) -> str | None:
    for network in SPECIAL_IPV4:
        if address in network:
            return f"a special-purpose address ({network})"
    if not address.is_global:
        return "not a global address"
    return None


def refusal(address: Address, own: set[Address]) -> str | None:
    """Why a guest may not reach `address`, or None (only global addresses of other hosts)."""
    if address in own:
        return "an address of the devbox's host"
    if isinstance(address, ipaddress.IPv4Address):
        return _ipv4_refusal(address)
    embedded = embedded_ipv4(address)
    if embedded is not None:
        form, inner = embedded
        why = "an address of the devbox's host" if inner in own else _ipv4_refusal(inner)
        if why is not None:
            return f"{form} of {inner}, {why}"
        if form != "IPv4-mapped":  # a translator or relay decides where it goes: never
            return f"{form} (of {inner}): a translation or tunnel address"
        return None
    for network in SPECIAL_IPV6:
        if address in network:
            return f"a special-purpose address ({network})"
    if not address.is_global or address.is_multicast:
        return "not a global address"
    return None


def host_addresses() -> set[Address]:
    """Every address of this host's interfaces (a guest must not reach host services)."""
    found = _ipv4_interface_addresses()
    with contextlib.suppress(OSError):
        for _, _, _, _, sockaddr in socket.getaddrinfo(socket.gethostname(), None):
            found.add(ipaddress.ip_address(sockaddr[0]))
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(ipaddress.ip_address(":".join(raw[i : i + 4] for i in range(0, 32, 4))))
    return found


def _ipv4_interface_addresses() -> set[Address]:
    """IPv4 addresses of local interfaces, from the kernel's local routing table."""
    found: set[Address] = set()
    with contextlib.suppress(OSError):
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
        for previous, line in itertools.pairwise(lines):
            if "/32 host LOCAL" in line:
                found.add(ipaddress.ip_address(previous.split()[-1]))
    return found
