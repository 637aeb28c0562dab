"""Outbound requests the server makes for users (webhooks, URL imports): an SSRF guard.

A URL is allowed when its scheme is https (http only with `OUTBOUND_ALLOW_HTTP`) and every address its host
resolves to is public: loopback, private, link-local, multicast, reserved, unspecified and other non-global
addresses are refused unless the host name or the address is in `OUTBOUND_ALLOWLIST` (host names, `*.domain`
wildcards and CIDRs). `check_outbound_url` validates a URL up front (a 422 at submission); `guarded_client`
checks again when it connects and connects to the very address it checked, so a host whose DNS answer changes
between the check and the request (DNS rebinding) cannot reach an internal address. Redirects are not followed
and environment proxies are not used by the guarded client.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import typing
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio
import certifi
import httpcore
import httpx

from service.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEFAULT_PORTS = {"https": 443, "http": 80}


class OutboundURLRefusedError(ValueError):
    """The URL may not be fetched or posted to by the server; the message says why and what to change."""


@dataclass(frozen=True)
class Allowlist:
    """`OUTBOUND_ALLOWLIST` parsed: exact host names, `*.domain` suffixes and networks."""

    hosts: frozenset[str]
    suffixes: tuple[str, ...]
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: list[str]) -> Allowlist:
        hosts: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
                continue
            except ValueError:
                pass
            if entry.startswith("*."):
                suffixes.append(entry[1:])  # ".example.com"
            else:
                hosts.add(entry)
        return cls(frozenset(hosts), tuple(suffixes), tuple(networks))

    def allows_host(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        return host in self.hosts or any(host.endswith(suffix) for suffix in self.suffixes)

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.networks)


def _normalize(address: IPAddress) -> IPAddress:
    """An IPv4-mapped IPv6 address (::ffff:127.0.0.1) is judged as the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def refused_kind(address: IPAddress) -> str | None:
    """Why an address is not public ('loopback', 'private', ...), or None when it is a public address."""
    address = _normalize(address)
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("non-global", not address.is_global),
    )
    return next((kind for kind, hit in checks if hit), None)


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address `host` resolves to (an IP literal resolves to itself), in the resolver's order."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError, OSError) as exc:
        raise OutboundURLRefusedError(
            f"host {host!r} does not resolve ({exc}); use a host name this server can resolve"
        ) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _name, sockaddr in infos:
        address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    if not addresses:
        raise OutboundURLRefusedError(f"host {host!r} resolves to no address; use a host name with an A/AAAA record")
    return addresses


def checked_addresses(host: str, port: int, settings: Settings) -> list[IPAddress]:
    """Resolve `host` and return its addresses when all of them may be reached; raise otherwise."""
    allowlist = Allowlist.parse(settings.outbound_allowlist)
    addresses = resolve(host, port)
    if allowlist.allows_host(host):
        return addresses
    for address in addresses:
        kind = refused_kind(address)
        if kind is not None and not allowlist.allows_address(address):
            shown = f"{host!r}" if host == str(address) else f"{host!r} (resolves to {address})"
            raise OutboundURLRefusedError(
                f"{shown} is a {kind} address; the server only connects to public addresses. Use a public "
                f"host, or have the operator add {host!r} or {address}/{address.max_prefixlen} to OUTBOUND_ALLOWLIST"
            )
    return addresses


def split_url(url: str, settings: Settings) -> tuple[str, str, int]:
    """(scheme, host, port) of an allowed URL shape; raise when the scheme or the URL is not acceptable."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OutboundURLRefusedError(f"{url!r} is not a valid URL ({exc}); give an absolute https:// URL") from exc
    scheme = parts.scheme.lower()
    allowed = ("https", "http") if settings.outbound_allow_http else ("https",)
    if scheme not in allowed:
        hint = "" if settings.outbound_allow_http or scheme != "http" else " (http needs OUTBOUND_ALLOW_HTTP=true)"
        raise OutboundURLRefusedError(
            f"URL scheme {parts.scheme or '(none)'!r} is not allowed; use {' or '.join(allowed)}://{hint}"
        )
    host = parts.hostname
    if not host:
        raise OutboundURLRefusedError(f"{url!r} has no host; give an absolute URL such as https://example.com/hook")
    return scheme, host, port or DEFAULT_PORTS[scheme]


def check_outbound_url(url: str, settings: Settings) -> None:
    """Raise `OutboundURLRefusedError` unless the server may send requests to `url` (see the module doc)."""
    _scheme, host, port = split_url(url, settings)
    checked_addresses(host, port, settings)


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to checked addresses: resolves and checks the host at connect time, then connects to the
    checked IP itself (TLS still verifies the certificate against the URL's host name)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in checked_addresses(host, port, self.settings):
            try:
                return super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"could not connect to {host}:{port}")


class _AsyncGuardedBackend(httpcore.AnyIOBackend):
    """The async twin of `_GuardedBackend` (resolution runs in a thread)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: typing.Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        addresses = await anyio.to_thread.run_sync(checked_addresses, host, port, self.settings)
        last: Exception | None = None
        for address in addresses:
            try:
                return await super().connect_tcp(str(address), port, timeout, local_address, socket_options)
            except httpcore.ConnectError as exc:
                last = exc
        raise last or httpcore.ConnectError(f"could not connect to {host}:{port}")


def tls_verify(settings: Settings) -> bool | ssl.SSLContext:
    """What outbound HTTPS trusts: the default CA bundle, plus `OUTBOUND_CA_BUNDLE` (a private CA) when set."""
    if settings.outbound_ca_bundle is None:
        return True
    context = ssl.create_default_context(cafile=certifi.where())
    context.load_verify_locations(cafile=str(settings.outbound_ca_bundle))
    return context


class GuardedTransport(httpx.HTTPTransport):
    """httpx transport whose connections go only to addresses `checked_addresses` allowed."""

    def __init__(self, settings: Settings, **kwargs: typing.Any) -> None:
        kwargs.setdefault("verify", tls_verify(settings))
        super().__init__(**kwargs)
        self._pool._network_backend = _GuardedBackend(settings)  # type: ignore[union-attr]


class AsyncGuardedTransport(httpx.AsyncHTTPTransport):
    """Async httpx transport whose connections go only to addresses `checked_addresses` allowed."""

    def __init__(self, settings: Settings, **kwargs: typing.Any) -> None:
        kwargs.setdefault("verify", tls_verify(settings))
        super().__init__(**kwargs)
        self._pool._network_backend = _AsyncGuardedBackend(settings)  # type: ignore[union-attr]


def guarded_client(settings: Settings, timeout: float) -> httpx.Client:
    """An httpx client for user-given URLs: checks each URL's shape before sending and each connection's address
    when connecting; no redirects, no environment proxies. Refusals raise `OutboundURLRefusedError`."""

    def check_request(request: httpx.Request) -> None:
        split_url(str(request.url), settings)

    return httpx.Client(
        transport=GuardedTransport(settings),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        event_hooks={"request": [check_request]},
    )


def async_guarded_client(settings: Settings, timeout: float) -> httpx.AsyncClient:
    """The async twin of `guarded_client`."""

    async def check_request(request: httpx.Request) -> None:
        split_url(str(request.url), settings)

    return httpx.AsyncClient(
        transport=AsyncGuardedTransport(settings),
        timeout=timeout,
        follow_redirects=False,
        trust_env=False,
        event_hooks={"request": [check_request]},
    )
