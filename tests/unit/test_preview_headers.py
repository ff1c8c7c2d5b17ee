"""The preview proxy's header rules (hop-by-hop headers, our Authorization, redirects)."""

from __future__ import annotations

from devbox_service.previews import proxy


def test_proxy_header_rules() -> None:
    sent = [
        (b"host", b"example"),
        (b"connection", b"keep-alive, x-private"),
        (b"x-private", b"1"),
        (b"authorization", b"Bearer k"),
        (b"cookie", b"a=1"),
        (b"content-length", b"3"),
    ]
    forwarded = {"x-forwarded-prefix": "/preview/d/n"}
    kept = proxy.request_headers(sent, drop_authorization=True, forwarded=forwarded)
    assert kept == [(b"cookie", b"a=1"), (b"x-forwarded-prefix", b"/preview/d/n")]
    with_auth = proxy.request_headers(sent, drop_authorization=False, forwarded={})
    assert (b"authorization", b"Bearer k") in with_auth
    assert proxy.bearer_of(sent) == "k"
    assert proxy.bearer_of([(b"authorization", b"Basic abc")]) is None
    assert proxy.location("/next", "/preview/d/n", 5000) == "/preview/d/n/next"
    assert proxy.location("http://127.0.0.1:5000/x", "/preview/d/n", 5000) == "/preview/d/n/x"
    assert proxy.location("https://example.com/", "/preview/d/n", 5000) == "https://example.com/"
