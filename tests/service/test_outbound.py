"""The SSRF guard for outbound URLs (webhooks, URL imports): real resolution, a real local HTTP server."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from service.outbound import (
    OutboundURLRefusedError,
    async_guarded_client,
    check_outbound_url,
    guarded_client,
)
from service.settings import Settings


def settings(**values: object) -> Settings:
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    "url",
    [
        "https://8.8.8.8/hook",
        "https://[2606:4700:4700::1111]/hook",
        "https://1.1.1.1:8443/path?q=1",
    ],
)
def test_public_https_addresses_are_allowed(url: str) -> None:
    check_outbound_url(url, settings())


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("https://127.0.0.1/hook", "loopback"),
        ("https://localhost/hook", "loopback"),
        ("https://[::1]/hook", "loopback"),
        ("https://[::ffff:127.0.0.1]/hook", "loopback"),
        ("https://10.1.2.3/hook", "private"),
        ("https://192.168.0.10/hook", "private"),
        ("https://172.16.5.4/hook", "private"),
        ("https://169.254.169.254/latest/meta-data", "link-local"),
        ("https://0.0.0.0/hook", "unspecified"),
        ("https://224.0.0.1/hook", "multicast"),
        ("https://240.0.0.1/hook", "reserved"),
        ("https://100.64.0.1/hook", "non-global"),
        ("https://[fd00::1]/hook", "private"),
        ("https://[fe80::1]/hook", "link-local"),
    ],
)
def test_non_public_addresses_are_refused_with_the_fix(url: str, kind: str) -> None:
    with pytest.raises(OutboundURLRefusedError) as refused:
        check_outbound_url(url, settings())
    message = str(refused.value)
    assert f"a {kind} address" in message
    assert "OUTBOUND_ALLOWLIST" in message


def test_schemes_and_shapes() -> None:
    with pytest.raises(OutboundURLRefusedError, match="OUTBOUND_ALLOW_HTTP"):
        check_outbound_url("http://8.8.8.8/hook", settings())
    check_outbound_url("http://8.8.8.8/hook", settings(outbound_allow_http=True))
    for url in ("ftp://8.8.8.8/x", "file:///etc/passwd", "gopher://8.8.8.8/", "8.8.8.8/hook"):
        with pytest.raises(OutboundURLRefusedError, match="scheme"):
            check_outbound_url(url, settings(outbound_allow_http=True))
    with pytest.raises(OutboundURLRefusedError, match="no host"):
        check_outbound_url("https:///hook", settings())
    with pytest.raises(OutboundURLRefusedError, match="not a valid URL"):
        check_outbound_url("https://8.8.8.8:99999/hook", settings())
    with pytest.raises(OutboundURLRefusedError, match="does not resolve"):
        check_outbound_url("https://no-such-host.invalid/hook", settings())


def test_allowlist_by_host_wildcard_and_cidr() -> None:
    check_outbound_url("https://localhost/hook", settings(outbound_allowlist=["localhost"]))
    check_outbound_url("https://LOCALHOST/hook", settings(outbound_allowlist=["localhost"]))
    check_outbound_url("https://127.0.0.1/hook", settings(outbound_allowlist=["127.0.0.0/8"]))
    check_outbound_url("https://10.9.8.7/hook", settings(outbound_allowlist=["10.0.0.0/8", "example.com"]))
    check_outbound_url("https://[::1]/hook", settings(outbound_allowlist=["::1"]))
    with pytest.raises(OutboundURLRefusedError):  # another private range is still refused
        check_outbound_url("https://192.168.1.1/hook", settings(outbound_allowlist=["10.0.0.0/8"]))
    with pytest.raises(OutboundURLRefusedError):  # a wildcard covers subdomains, not the bare name
        check_outbound_url("https://localhost/hook", settings(outbound_allowlist=["*.localhost"]))
    # from the environment: comma-separated
    parsed = Settings.model_validate({"outbound_allowlist": "localhost, 10.0.0.0/8 ,"})
    assert parsed.outbound_allowlist == ["localhost", "10.0.0.0/8"]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:1/secret")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = b"reached"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def local_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_guarded_client_checks_each_connection(local_server: str) -> None:
    # http allowed, loopback not: refused when connecting, whatever was checked before (DNS rebinding)
    with (
        guarded_client(settings(outbound_allow_http=True), timeout=5) as client,
        pytest.raises(OutboundURLRefusedError, match="loopback"),
    ):
        client.get(local_server + "/")
    with guarded_client(settings(), timeout=5) as client, pytest.raises(OutboundURLRefusedError, match="scheme"):
        client.get(local_server + "/")
    allowed = settings(outbound_allow_http=True, outbound_allowlist=["127.0.0.1/32"])
    with guarded_client(allowed, timeout=5) as client:
        assert client.get(local_server + "/").text == "reached"
        redirect = client.get(local_server + "/redirect")
        assert redirect.status_code == 302  # not followed
    by_name = settings(outbound_allow_http=True, outbound_allowlist=["localhost"])
    with guarded_client(by_name, timeout=5) as client:
        assert client.get(local_server.replace("127.0.0.1", "localhost") + "/").text == "reached"


def test_async_guarded_client_checks_each_connection(local_server: str) -> None:
    async def fetch(values: dict[str, object]) -> str:
        async with async_guarded_client(settings(**values), timeout=5) as client:
            return (await client.get(local_server + "/")).text

    with pytest.raises(OutboundURLRefusedError, match="loopback"):
        asyncio.run(fetch({"outbound_allow_http": True}))
    assert asyncio.run(fetch({"outbound_allow_http": True, "outbound_allowlist": ["127.0.0.1"]})) == "reached"
