"""A server a web page cannot use: `crew serve` refuses what a browser sends on a page's behalf.

Each attack is sent to a real uvicorn server as a page would make a browser send it (a rebound
DNS name in `Host`, a foreign `Origin`, a "simple" text/plain or form POST that needs no
preflight, a body nested to crash the parser). The assertions are on what the fake Ollama
recorded: nothing of a refused request may reach it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest

from crew.serve.browsers import MAX_DEPTH, too_deep
from tests.fake_ollama import FakeOllama
from tests.helpers import CODER, REVIEWER
from tests.serving import Served, running, serve_settings

CHAT = {"model": REVIEWER, "messages": [{"role": "user", "content": "hi"}], "stream": False}
LOAD = b'{"model": "%s", "keep_alive": "1h"}' % CODER.encode()  # a load: no messages
UNLOAD = b'{"model": "%s", "keep_alive": 0}' % CODER.encode()
EVIL = "https://evil.example"


@pytest.fixture
def served(ollama: FakeOllama) -> Iterator[Served]:
    with running(serve_settings(ollama)) as s:
        yield s


def port_of(served: Served) -> str:
    return served.url.rsplit(":", 1)[1]


def nothing_reached(ollama: FakeOllama) -> None:
    assert ollama.chats == [] and ollama.loads == [] and ollama.unloads == []


@pytest.mark.hostile
def test_a_rebound_host_is_refused_and_loopback_names_are_answered(served: Served,
                                                                   ollama: FakeOllama) -> None:
    for host in ("evil.example", f"evil.example:{port_of(served)}", "127.0.0.1.evil.example", "x"):
        chat = httpx.post(f"{served.url}/api/chat", json=CHAT, headers={"Host": host})
        assert chat.status_code == 403 and "CREW_SERVE_ALLOWED_HOSTS" in chat.json()["error"]
        assert httpx.get(f"{served.url}/api/tags", headers={"Host": host}).status_code == 403
        models = httpx.get(f"{served.url}/v1/models", headers={"Host": host})
        assert models.status_code == 403 and models.json()["error"]["code"] == 403  # OpenAI's shape
    nothing_reached(ollama)
    for host in ("localhost", f"localhost:{port_of(served)}", "127.0.0.1", f"[::1]:{port_of(served)}",
                 "[::1]", "ui.localhost", "LOCALHOST."):
        assert httpx.get(f"{served.url}/api/tags", headers={"Host": host}).status_code == 200, host


@pytest.mark.hostile
def test_a_foreign_origin_is_refused_token_or_not(ollama: FakeOllama) -> None:
    with running(serve_settings(ollama, serve_token="s3cret")) as s:
        token = {"Authorization": "Bearer s3cret"}
        for origin in (EVIL, "null", "http://localhost.evil.example", "http://127.0.0.1.evil.example:80"):
            chat = httpx.post(f"{s.url}/api/chat", json=CHAT, headers={**token, "Origin": origin})
            assert chat.status_code == 403 and "CREW_SERVE_ORIGINS" in chat.json()["error"], origin
        # An image or link on another site: no Origin, but the browser says where it came from.
        linked = httpx.get(f"{s.url}/api/ps", headers={**token, "Sec-Fetch-Site": "cross-site"})
        assert linked.status_code == 403
        nothing_reached(ollama)
        for origin in ("http://localhost:3000", "https://127.0.0.1", "vscode-webview://abc", "app://x"):
            assert httpx.get(f"{s.url}/api/tags", headers={**token, "Origin": origin}).status_code == 200
    with running(serve_settings(ollama, serve_origins=f"{EVIL}, https://*.ui.example")) as s:
        for origin in (EVIL, "https://a.ui.example"):
            assert httpx.get(f"{s.url}/api/tags", headers={"Origin": origin}).status_code == 200
        other = httpx.get(f"{s.url}/api/tags", headers={"Origin": "https://ui.example.evil"})
        assert other.status_code == 403


SIMPLE = ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
          "multipart/form-data; boundary=x")  # what a page may POST with no preflight


@pytest.mark.hostile
def test_a_simple_cross_site_post_is_refused(served: Served, ollama: FakeOllama) -> None:
    for kind, (path, body) in ((k, r) for k in SIMPLE for r in (
            ("/api/chat", LOAD), ("/api/generate", UNLOAD), ("/v1/chat/completions", LOAD))):
        # As a page sends it (with its Origin), and as a program sends it (no Origin).
        sent = httpx.post(f"{served.url}{path}", content=body, headers={"Content-Type": kind, "Origin": EVIL})
        assert sent.status_code == 403, (path, kind)
        sent = httpx.post(f"{served.url}{path}", content=body, headers={"Content-Type": kind})
        assert sent.status_code == 415 and "application/json" in str(sent.json()["error"]), (path, kind)
    nothing_reached(ollama)
    loaded = httpx.post(f"{served.url}/api/chat", content=LOAD, headers={"Content-Type": "application/json"})
    assert loaded.status_code == 200 and ollama.load_names() == [CODER]  # JSON is answered


@pytest.mark.hostile
def test_a_deeply_nested_body_is_a_400_without_a_traceback(served: Served, ollama: FakeOllama) -> None:
    logged: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = logged.append  # type: ignore[method-assign]
    loggers = [logging.getLogger(name) for name in ("uvicorn.error", "crew.serve", "fastapi")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        deep = b"[" * 100_000 + b"]" * 100_000
        nested = b'{"model": "%s", "options": %s}' % (REVIEWER.encode(), b'{"a":' * 200 + b"1" + b"}" * 200)
        for path, body in (("/api/chat", deep), ("/api/chat", nested), ("/v1/chat/completions", deep),
                           ("/route", deep)):
            sent = httpx.post(f"{served.url}{path}", content=body,
                              headers={"Content-Type": "application/json"})
            assert sent.status_code == 400, path
            error = sent.json()["error"]
            assert f"deeper than {MAX_DEPTH}" in (error["message"] if path.startswith("/v1/") else error)
        # Past the depth check, inside strings and odd shapes: still a 400 in OpenAI's shape.
        for message in ({"role": "assistant", "content": "", "tool_calls": [
                            {"id": "c1", "type": "function",
                             "function": {"name": "f", "arguments": "[" * 100_000}}]},
                        {"role": "user", "content": ["x"]},
                        {"role": "assistant", "content": "", "tool_calls": "not a list"}):
            sent = httpx.post(f"{served.url}/v1/chat/completions",
                              json={"model": REVIEWER, "messages": [message]})
            assert sent.status_code == 400, message
            assert sent.json()["error"]["message"]
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert [r for r in logged if r.exc_info or r.levelno >= logging.ERROR] == []
    nothing_reached(ollama)


@pytest.mark.hostile
def test_off_loopback_with_a_token_any_host_unless_listed(ollama: FakeOllama) -> None:
    token = {"Authorization": "Bearer s3cret"}
    with running(serve_settings(ollama, serve_host="0.0.0.0", serve_token="s3cret")) as s:
        named = httpx.get(f"{s.url}/api/tags", headers={**token, "Host": "gpu-box.lan:8000"})
        assert named.status_code == 200
        assert httpx.get(f"{s.url}/api/tags", headers={**token, "Origin": EVIL}).status_code == 403
    with running(serve_settings(ollama, serve_host="192.168.7.9", serve_token="s3cret",
                                serve_allowed_hosts="gpu-box.lan")) as s:
        for host, status in (("gpu-box.lan:8000", 200), ("192.168.7.9", 200), ("127.0.0.1", 200),
                             ("evil.example", 403)):
            assert httpx.get(f"{s.url}/api/tags", headers={**token, "Host": host}).status_code == status, host
    with running(serve_settings(ollama, serve_allowed_hosts="gpu-box.lan")) as s:  # loopback, listed
        assert httpx.get(f"{s.url}/api/tags", headers={"Host": "gpu-box.lan"}).status_code == 200
        assert httpx.get(f"{s.url}/api/tags", headers={"Host": "evil.example"}).status_code == 403


def test_depth_is_counted_outside_strings_only() -> None:
    assert not too_deep(b"[" * MAX_DEPTH + b"]" * MAX_DEPTH)
    assert too_deep(b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1))
    assert not too_deep(b'{"a": "%s"}' % (b"[{" * 10_000))
    assert not too_deep(b'{"a": "\\"[[[[", "b": [%s]}' % b",".join([b"[]"] * 10_000))


def test_depth_is_read_in_one_pass_strings_skipped() -> None:
    from crew.serve.browsers import too_deep

    assert not too_deep(b'{"a": "' + b"[" * 100 + b'"}')  # brackets in a string are text
    assert not too_deep(b'{"x": "\\"[[[["}' + b"[]" * 100)  # an escaped quote does not end it
    assert too_deep(b"[" * 65 + b"]" * 65) and not too_deep(b"[" * 64 + b"]" * 64)
    assert too_deep(b"[{" * 33 + b"}]" * 33) and not too_deep(b"[{" * 32 + b"}]" * 32)
    assert too_deep(b"[" * 16_000)  # never closed: no parser should recurse into it
    # An unclosed string of escaped quotes after the opening brackets: once cost a pass per quote.
    assert too_deep(b"[" * 65 + b'"' + b'\\"' * 50_000)
