"""The preview proxy's header rules (hop-by-hop headers, our Authorization, redirects)."""

from __future__ import annotations

import httpx

from devbox_service.backends.base import PortForward
from devbox_service.previews import proxy


def test_proxy_header_rules() -> None:
    sent = [
        (b"host", b"example"),
        (b"connection", b"keep-alive, x-private"),
        (b"x-private", b"1"),
        (b"authorization", b"Bearer k"),
        (b"cookie", b"a=1; devbox_session=victim; b=2"),
        (b"content-length", b"3"),
    ]
    forwarded = {"x-forwarded-prefix": "/preview/d/n"}
    kept = proxy.request_headers(sent, forwarded=forwarded)
    # the caller's credentials never reach the guest: no Authorization, no dashboard cookie
    assert kept == [(b"cookie", b"a=1; b=2"), (b"x-forwarded-prefix", b"/preview/d/n")]
    only_ours = proxy.request_headers([(b"cookie", b"devbox_sign_in=x")], forwarded={})
    assert only_ours == []
    assert proxy.bearer_of(sent) == "k"
    assert proxy.bearer_of([(b"authorization", b"Basic abc")]) is None
    guest = PortForward(address="127.0.0.1", port=5000)
    assert proxy.location("/next", "/preview/d/n", guest) == "/preview/d/n/next"
    assert proxy.location("http://127.0.0.1:5000/x", "/preview/d/n", guest) == "/preview/d/n/x"
    assert proxy.location("https://example.com/", "/preview/d/n", guest) == "https://example.com/"
    elsewhere = PortForward(address="fd00::7", port=5000)  # a VM on another host
    assert proxy.location("http://[fd00::7]:5000/y", "", elsewhere) == "/y"


def test_guest_cookies_stay_with_their_service_and_service_workers_stay_in_scope() -> None:
    cookie = "sid=1; Domain=localhost; Path=/app; HttpOnly"
    assert proxy.scoped_cookie(cookie, "") == "sid=1; HttpOnly; Path=/app"
    assert proxy.scoped_cookie(cookie, "/preview/d/n") == "sid=1; HttpOnly; Path=/preview/d/n/app"
    assert proxy.scoped_cookie("a=b", "/preview/d/n") == "a=b; Path=/preview/d/n/"
    upstream = httpx.Response(
        200,
        headers=[
            ("Set-Cookie", "a=1; Domain=.localhost"),
            ("Set-Cookie", "b=2"),
            ("Service-Worker-Allowed", "/"),
            ("Content-Type", "text/html"),
        ],
    )
    assert proxy.response_headers(upstream, "", PortForward(address="10.0.0.2", port=80)) == [
        ("Set-Cookie", "a=1; Path=/"),
        ("Set-Cookie", "b=2; Path=/"),
        ("Content-Type", "text/html"),
    ]


def test_only_a_services_own_host_is_routed_to_it() -> None:
    from devbox_service.previews.origins import origin_url, parse_host

    url = origin_url("http://127.0.0.1:8000", "localhost")("devbox_ab12", "my-app")
    assert url == "http://my-app-devbox_ab12.localhost:8000/"
    assert parse_host("my-app-devbox_ab12.localhost:8000", "localhost") == ("devbox_ab12", "my-app")
    for other in ("localhost:8000", "my-app-devbox_ab12.example.com", "devbox_ab12.localhost"):
        assert parse_host(other, "localhost") is None
