"""Which addresses a webhook may reach (core/webhooks/addresses.py), how a checked URL is
pinned to its address, and the excerpt a delivery keeps of a reply (worker/webhooks.py)."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from core.webhooks import addresses

REFUSED = {
    "127.0.0.1": "loopback",
    "127.255.0.9": "loopback",
    "::1": "loopback",
    "0.0.0.0": "unspecified",
    "::": "unspecified",
    "10.0.0.1": "private",
    "172.16.5.4": "private",
    "192.168.0.1": "private",
    "fc00::1": "private",
    "fd12:3456::1": "private",
    "169.254.169.254": "link-local",
    "fe80::1": "link-local",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "ff02::1": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "100.64.0.1": "not a public address",
    "192.0.2.1": "private",
    "::ffff:127.0.0.1": "carrying 127.0.0.1, a loopback",
    "::ffff:10.0.0.1": "carrying 10.0.0.1",
    "2002:7f00:1::": "carrying 127.0.0.1",
    "64:ff9b::a00:1": "carrying 10.0.0.1",
    "::7f00:1": "reserved",
}
PUBLIC = [
    "8.8.8.8",
    "93.184.216.34",
    "1.1.1.1",
    "2606:4700:4700::1111",
    "::ffff:8.8.8.8",
    "2002:5db8:d822::",
]


@pytest.mark.parametrize("address,kind", sorted(REFUSED.items()))
def test_addresses_that_are_not_public_are_refused(address: str, kind: str) -> None:
    why = addresses.problem(ipaddress.ip_address(address), ())
    assert why is not None and kind in why and addresses.SETTING in why, why


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert addresses.problem(ipaddress.ip_address(address), ()) is None


def test_allowed_networks_let_their_addresses_through() -> None:
    nets = addresses._parse_networks("127.0.0.1/32, 10.0.0.0/8,fd00::/8")
    for ok in ("127.0.0.1", "10.9.9.9", "::ffff:127.0.0.1", "fd00::5"):
        assert addresses.problem(ipaddress.ip_address(ok), nets) is None, ok
    for refused in ("127.0.0.2", "::1", "192.168.1.1", "fc00::1"):
        assert addresses.problem(ipaddress.ip_address(refused), nets) is not None, refused
    with pytest.raises(
        ValueError, match="DS_WEBHOOK_ALLOWED_NETWORKS: 'nonsense' is not a network"
    ):
        addresses._parse_networks("127.0.0.1/32,nonsense")


@pytest.mark.parametrize(
    "host", ["localhost", "2130706433", "0177.0.0.1", "0x7f.1", "127.1", "[::ffff:7f00:1]"]
)
def test_odd_spellings_of_loopback_resolve_and_are_refused(host: str) -> None:
    with pytest.raises(addresses.RefusedAddress, match="loopback"):
        addresses.check_url(f"http://{host}:6379/")


def test_pin_keeps_the_name_for_host_header_and_tls(monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):  # noqa: ANN001, ANN202 - socket's signature
        if host == "hooks.example.org":
            return real(
                "93.184.216.34" if port == 443 else "2606:4700:4700::1111", port, *args, **kwargs
            )
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    target = addresses.pin("https://hooks.example.org/ci/hook?a=1#frag")
    assert target.url == "https://93.184.216.34/ci/hook?a=1"
    assert target.host_header == "hooks.example.org" and target.sni_hostname == "hooks.example.org"
    six = addresses.pin("http://hooks.example.org:8080")
    assert six.url == "http://[2606:4700:4700::1111]:8080/" and six.sni_hostname is None
    assert six.host_header == "hooks.example.org:8080"
    literal = addresses.pin("https://8.8.8.8/x")
    assert literal.sni_hostname is None and literal.host_header == "8.8.8.8"


def test_unresolvable_names_say_so() -> None:
    with pytest.raises(addresses.Unresolvable, match="does not resolve"):
        addresses.check_url("https://no-such-host.invalid/hook")


def test_reply_excerpt_is_short_and_printable() -> None:
    from worker.webhooks import EXCERPT_CHARS, excerpt

    text = excerpt(b"\x1b[2J\x00line one\r\nline\ttwo \xff\xfe" + b"x" * 1000)
    assert text.startswith("[2J line one line two") and text.endswith(" ...")
    assert len(text) == EXCERPT_CHARS + 4 and all(ch.isprintable() for ch in text)
    assert excerpt(b"\xe2\x80\xae right-to-left override") == "right-to-left override"
