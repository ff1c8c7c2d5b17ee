"""The egress proxy's address rules: only global unicast addresses of other hosts, with the
IPv6 forms that carry an IPv4 address judged by that address (and tunnels refused)."""

from __future__ import annotations

import ipaddress

import pytest

from devbox_service.egress.addresses import refusal

OWN = {ipaddress.ip_address("203.0.114.7"), ipaddress.ip_address("2a01:4f8::7")}

REFUSED = [
    ("127.0.0.1", "special-purpose"),
    ("10.1.2.3", "special-purpose"),
    ("100.64.0.1", "special-purpose"),
    ("169.254.169.254", "special-purpose"),
    ("192.0.0.1", "192.0.0.0/24"),
    ("192.0.0.9", "192.0.0.0/24"),
    ("198.18.0.1", "198.18.0.0/15"),
    ("198.19.255.255", "198.18.0.0/15"),
    ("192.88.99.1", "192.88.99.0/24"),
    ("203.0.113.5", "special-purpose"),
    ("224.0.0.1", "special-purpose"),
    ("255.255.255.255", "special-purpose"),
    ("203.0.114.7", "host"),
    ("::", "IPv4-compatible"),
    ("::1", "IPv4-compatible"),
    ("::7f00:1", "IPv4-compatible of 127.0.0.1"),
    ("::808:808", "IPv4-compatible (of 8.8.8.8)"),
    ("::ffff:127.0.0.1", "IPv4-mapped of 127.0.0.1"),
    ("::ffff:10.0.0.1", "IPv4-mapped of 10.0.0.1"),
    ("::ffff:203.0.114.7", "IPv4-mapped of 203.0.114.7, an address of the devbox's host"),
    ("64:ff9b::7f00:1", "NAT64 of 127.0.0.1"),
    ("64:ff9b::a9fe:a9fe", "NAT64 of 169.254.169.254"),
    ("64:ff9b::808:808", "NAT64 (of 8.8.8.8)"),
    ("64:ff9b:1::1", "64:ff9b:1::/48"),
    ("2002:7f00:1::1", "6to4 of 127.0.0.1"),
    ("2002:808:808::1", "6to4 (of 8.8.8.8)"),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
    ("2001:db8::1", "special-purpose"),
    ("2001:2::1", "2001::/23"),
    ("100::1", "100::/64"),
    ("3fff::1", "3fff::/20"),
    ("fc00::1", "fc00::/7"),
    ("fd12:3456::1", "fc00::/7"),
    ("fe80::1", "fe80::/10"),
    ("fec0::1", "fec0::/10"),
    ("ff02::1", "ff00::/8"),
    ("ff0e::1", "ff00::/8"),
    ("2a01:4f8::7", "host"),
]

ALLOWED = ["8.8.8.8", "1.1.1.1", "151.101.0.223", "2606:4700::1111", "::ffff:8.8.8.8"]


@pytest.mark.parametrize(("address", "why"), REFUSED)
def test_refused(address: str, why: str) -> None:
    reason = refusal(ipaddress.ip_address(address), OWN)
    assert reason is not None, f"{address} was allowed"
    assert why in reason


@pytest.mark.parametrize("address", ALLOWED)
def test_allowed(address: str) -> None:
    assert refusal(ipaddress.ip_address(address), OWN) is None
