"""Where a webhook may go: its host is resolved and every address must be public.

Loopback, private, link-local, multicast, unspecified, reserved and other non-global addresses,
IPv4 and IPv6 alike, are refused, whatever the spelling: the host goes through the system
resolver (`getaddrinfo`), which turns `localhost`, `2130706433`, `0x7f.1` or `0177.0.0.1` into
the address they mean, and IPv6 addresses that carry an IPv4 one (`::ffff:127.0.0.1`, 6to4,
Teredo, NAT64) are judged by that address too. Networks named in `DS_WEBHOOK_ALLOWED_NETWORKS`
(comma-separated CIDRs) are let through, e.g. a CI server on the office network.

The check runs when a webhook is registered or changed (a 422 naming the address and the
setting) and again before each delivery, which then connects to the address that was checked
(`Target`), so a name that resolves elsewhere by delivery time (DNS rebinding) gains nothing.
Torch-free; the API and the worker both use it.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit, urlunsplit

from core.settings import get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
SETTING = "DS_WEBHOOK_ALLOWED_NETWORKS"
NAT64 = ipaddress.ip_network("64:ff9b::/96")


class RefusedAddress(ValueError):
    """The webhook's host is, or resolves to, an address webhooks may not reach."""


class Unresolvable(ValueError):
    """The webhook's host does not resolve (now)."""


@dataclass(frozen=True)
class Target:
    """A checked destination: the URL to connect to (host = the checked IP) and the headers and
    extensions that keep the request addressed to the name (Host header, TLS SNI and
    certificate name)."""

    url: str
    host_header: str
    sni_hostname: str | None
    address: str


@lru_cache(maxsize=16)
def _parse_networks(text: str) -> tuple[IPNetwork, ...]:
    networks = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        try:
            networks.append(ipaddress.ip_network(part, strict=False))
        except ValueError:
            raise ValueError(
                f"{SETTING}: '{part}' is not a network; give comma-separated CIDRs such as "
                "127.0.0.1/32,10.0.0.0/8"
            ) from None
    return tuple(networks)


def allowed_networks() -> tuple[IPNetwork, ...]:
    """The networks of DS_WEBHOOK_ALLOWED_NETWORKS (none by default)."""
    return _parse_networks(get_settings().webhook_allowed_networks)


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo client, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _kind(ip: IPAddress) -> str | None:
    """What makes `ip` unfit for a webhook ("a loopback address", ...), or None when public."""
    for test, kind in (
        ("is_unspecified", "the unspecified address"),
        ("is_loopback", "a loopback address"),
        ("is_link_local", "a link-local address"),
        ("is_multicast", "a multicast address"),
        ("is_reserved", "a reserved address"),
        ("is_private", "a private address"),
    ):
        if getattr(ip, test):
            return kind
    if not ip.is_global:
        return "not a public address"
    return None


def _allowed(ip: IPAddress, networks: tuple[IPNetwork, ...]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def problem(ip: IPAddress, networks: tuple[IPNetwork, ...] | None = None) -> str | None:
    """Why a webhook may not reach `ip` (naming it), or None when it may."""
    networks = allowed_networks() if networks is None else networks
    inner = _embedded_ipv4(ip) if isinstance(ip, ipaddress.IPv6Address) else None
    if _allowed(ip, networks) or (inner is not None and _allowed(inner, networks)):
        return None
    inner_kind = _kind(inner) if inner is not None else None
    if inner_kind is not None:
        kind: str | None = f"an IPv6 address carrying {inner}, {inner_kind}"
    elif inner is not None and ip.ipv4_mapped is not None:  # type: ignore[union-attr]
        kind = None  # ::ffff:a.b.c.d is a.b.c.d, which is public
    else:
        kind = _kind(ip)
    if kind is None:
        return None
    return (
        f"{ip} is {kind}; webhooks may only reach public addresses, unless the studio's "
        f"{SETTING} setting names its network (e.g. {ip}/{ip.max_prefixlen})"
    )


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (in the resolver's order), through the system resolver."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise Unresolvable(f"'{host}' does not resolve ({exc})") from None
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if ip not in addresses:
            addresses.append(ip)
    if not addresses:
        raise Unresolvable(f"'{host}' does not resolve")
    return addresses


def _port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    host = parts.hostname or ""
    return host, parts.port or (443 if parts.scheme == "https" else 80)


def check_url(url: str) -> list[IPAddress]:
    """Resolve the URL's host and refuse it if any of its addresses may not be reached.

    Raises RefusedAddress naming the address, what it is and the setting; Unresolvable when the
    host does not resolve. Returns the addresses.
    """
    host, port = _port(url)
    addresses = resolve(host, port)
    networks = allowed_networks()
    for ip in addresses:
        why = problem(ip, networks)
        if why is not None:
            shown = "" if host.lower().strip("[]") == str(ip) else f" ('{host}' resolves to it)"
            raise RefusedAddress(why.replace(f"{ip} is", f"{ip}{shown} is", 1))
    return addresses


def pin(url: str) -> Target:
    """Check the URL (see `check_url`) and pin it to its first address: the URL to connect to
    with the IP in place of the name, and the Host header and TLS name that keep the name."""
    parts = urlsplit(url)
    addresses = check_url(url)
    ip = addresses[0]
    shown = f"[{ip}]" if ip.version == 6 else str(ip)
    netloc = shown if parts.port is None else f"{shown}:{parts.port}"
    host_header = parts.netloc.rsplit("@", 1)[-1]
    name = parts.hostname or ""
    is_literal = _is_ip(name)
    return Target(
        url=urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        host_header=host_header,
        sni_hostname=name if parts.scheme == "https" and not is_literal else None,
        address=str(ip),
    )


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
