"""`crew serve`: a real uvicorn server in front of the fake Ollama, driven by the real clients.

Assertions are on what the fake server recorded (what reached Ollama), not on what the server
says about itself.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import ollama as ol
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from crew.errors import SettingsError
from crew.serve import check_exposure, is_loopback
from crew.settings import load_settings
from tests.fake_ollama import GB, FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER
from tests.serving import Served, running, serve_settings, wait_until


@pytest.fixture
def served(ollama: FakeOllama) -> Iterator[Served]:
    with running(serve_settings(ollama)) as s:
        yield s


@pytest.fixture(autouse=True)
def _closing(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every official client a test makes is closed after it (unclosed sockets are errors here)."""
    made: list[object] = []
    for module, name in ((ol, "Client"), (openai, "OpenAI")):
        original = getattr(module, name)

        def make(*args: object, _original: type = original, **kwargs: object) -> object:
            client = _original(*args, **kwargs)
            made.append(client)
            return client

        monkeypatch.setattr(module, name, make)
    yield
    for client in made:
        client.close()  # type: ignore[attr-defined]


def chats_for(fake: FakeOllama, model: str) -> list[dict]:
    return [c for c in fake.chats if c["model"] == model]


# -- the Ollama API through the official client ----------------------------------------------------


def test_ollama_client_chat_keeps_servers_options_and_keep_alive(served: Served, ollama: FakeOllama) -> None:
    client = ol.Client(host=served.url)
    answer = client.chat(model=REVIEWER, messages=[{"role": "user", "content": "hi"}],
                         keep_alive="30m", options={"num_ctx": 2048, "temperature": 0.5}, stream=False)
    assert answer.message.content == "OK"
    parts = list(client.chat(model=REVIEWER, messages=[{"role": "user", "content": "again"}],
                             keep_alive=1800, stream=True))
    assert parts[-1].done and "".join(p.message.content or "" for p in parts) == "OK"
    sent = chats_for(ollama, REVIEWER)
    assert len(sent) == 2
    # The clients' keep_alive and num_ctx never reached Ollama; the server's did.
    assert all(c["keep_alive"] == 300 and c["options"]["num_ctx"] == 32768 for c in sent)
    assert sent[0]["options"]["temperature"] == 0.5  # sampling options are the client's
    assert ollama.load_names() == [REVIEWER] and not ollama.option_reloads()
    wait_until(lambda: served.pins() == {REVIEWER: 0})  # a stream's hold goes just after its last line


def test_ollama_client_generate_tools_and_thinking(served: Served, ollama: FakeOllama) -> None:
    ollama.script(REVIEWER, FakeReply("done", thinking="let me think"),
                  FakeReply("", tool_calls=[{"name": "read_file", "arguments": {"path": "a.py"}}]))
    client = ol.Client(host=served.url)
    generated = "".join(p.response for p in client.generate(model=REVIEWER, prompt="say", stream=True))
    assert generated == "done"
    tool = {"type": "function", "function": {"name": "read_file", "description": "read",
                                             "parameters": {"type": "object", "properties": {}}}}
    answer = client.chat(model=REVIEWER, messages=[{"role": "user", "content": "read a.py"}],
                         tools=[tool], think=True)
    assert answer.message.tool_calls[0].function.name == "read_file"
    assert answer.message.tool_calls[0].function.arguments == {"path": "a.py"}
    sent = chats_for(ollama, REVIEWER)
    assert sent[1]["tools"][0]["function"]["name"] == "read_file" and sent[1]["think"] is True


def test_ollama_client_reads_tags_show_ps_and_embeds(served: Served, ollama: FakeOllama) -> None:
    client = ol.Client(host=served.url)
    assert {m.model for m in client.list().models} == {ARCHITECT, CODER, REVIEWER}
    shown = client.show(CODER)
    assert "num_ctx 32768" in (shown.parameters or "")  # what Continue sizes its prompts by
    vectors = client.embed(model=REVIEWER, input=["a", "bb"]).embeddings
    assert len(vectors) == 2
    assert client.embeddings(model=REVIEWER, prompt="a").embedding
    running = client.ps().models
    assert [m.model for m in running] == [REVIEWER]
    raw = httpx.get(f"{served.url}/api/ps").json()
    assert raw["models"][0]["crew"] == {"role": "reviewer", "holders": [], "waiting": 0}
    assert all(c["keep_alive"] == 300 and c["options"]["num_ctx"] == 32768 for c in ollama.chats)
    assert httpx.get(f"{served.url}/api/version").json()["crew"]


def test_load_and_unload_requests_go_through_the_manager(served: Served, ollama: FakeOllama) -> None:
    client = ol.Client(host=served.url)
    loaded = client.chat(model=CODER, messages=[], keep_alive="1h")
    assert loaded.done_reason == "load" and ollama.load_names() == [CODER]
    # Open WebUI's unload: answered, but another client may be using it; the server decides.
    unloaded = client.generate(model=CODER, keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert CODER in ollama.resident() and not ollama.unloads


def test_model_management_is_501_and_unknown_model_404(served: Served, ollama: FakeOllama) -> None:
    client = ol.Client(host=served.url)
    with pytest.raises(ol.ResponseError) as pulled:
        client.pull("llama3")
    assert pulled.value.status_code == 501 and "ollama pull" in pulled.value.error
    with pytest.raises(ol.ResponseError) as missing:
        client.chat(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404 and "ollama pull nope:1b" in missing.value.error
    assert not ollama.chats


# -- the OpenAI API through the official client ----------------------------------------------------


def test_openai_client_chat_streamed_and_not(served: Served, ollama: FakeOllama) -> None:
    ollama.script(CODER, FakeReply("hello there"),
                  FakeReply("", tool_calls=[{"name": "write_file", "arguments": {"path": "x"}}]),
                  FakeReply("a b c"))
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused")
    whole = client.chat.completions.create(model=CODER, messages=[{"role": "user", "content": "hi"}],
                                           max_tokens=50, temperature=0.1)
    assert whole.choices[0].message.content == "hello there" and whole.usage.completion_tokens > 0
    tool = {"type": "function", "function": {"name": "write_file", "parameters": {"type": "object"}}}
    called = client.chat.completions.create(model=CODER, tools=[tool],  # type: ignore[list-item]
                                            messages=[{"role": "user", "content": "write"}])
    assert called.choices[0].finish_reason == "tool_calls"
    assert json.loads(called.choices[0].message.tool_calls[0].function.arguments) == {"path": "x"}
    chunks = list(client.chat.completions.create(model=CODER, stream=True,
                                                 messages=[{"role": "user", "content": "go"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b c"
    assert chunks[-1].choices[0].finish_reason == "stop"
    sent = chats_for(ollama, CODER)
    assert len(sent) == 3 and all(c["keep_alive"] == 300 and c["options"]["num_ctx"] == 32768 for c in sent)
    assert sent[0]["options"]["num_predict"] == 50 and sent[0]["options"]["temperature"] == 0.1
    assert [m.id for m in client.models.list().data] == [ARCHITECT, CODER, REVIEWER]
    assert ollama.load_names() == [CODER]


def test_openai_completions_and_embeddings(served: Served, ollama: FakeOllama) -> None:
    client = openai.OpenAI(base_url=f"{served.url}/v1", api_key="unused")
    ollama.script(REVIEWER, "def f(): pass")
    text = client.completions.create(model=REVIEWER, prompt="def f", max_tokens=20)
    assert text.choices[0].text == "def f(): pass"
    vectors = client.embeddings.create(model=REVIEWER, input=["one", "two"])
    assert len(vectors.data) == 2
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing:7b", messages=[{"role": "user", "content": "x"}])


# -- the seed's routes -------------------------------------------------------------------------


def test_route_by_task_type_with_timing_and_reason(served: Served, ollama: FakeOllama) -> None:
    ollama.script(CODER, "def add(a, b): return a + b")
    answer = httpx.post(f"{served.url}/route", json={"task_type": "implement", "prompt": "add()"},
                        timeout=30).json()
    assert answer["model"] == CODER and answer["role"] == "coder"
    assert answer["response"] == "def add(a, b): return a + b" and answer["agent"] == "Coder"
    assert answer["load_s"] is not None and answer["waited_s"] >= answer["load_s"]
    assert "implement" in answer["reason"]
    role = httpx.post(f"{served.url}/reviewer", json={"prompt": "look"}, timeout=30).json()
    assert role["model"] == REVIEWER
    assert ollama.chats[0]["options"]["num_predict"] == 4096


def test_batch_groups_by_model_and_answers_in_order(served: Served, ollama: FakeOllama) -> None:
    kinds = ["code", "review", "code", "review", "plan", "code"]
    answer = httpx.post(f"{served.url}/batch", timeout=30,
                        json=[{"task_type": k, "prompt": f"{i}"} for i, k in enumerate(kinds)]).json()
    assert [r["index"] for r in answer["results"]] == list(range(6))
    assert answer["succeeded"] == 6
    assert [r["result"]["model"] for r in answer["results"]] == [
        CODER, REVIEWER, CODER, REVIEWER, ARCHITECT, CODER]
    # One load per model, however the list interleaves them.
    assert sorted(ollama.load_names()) == sorted([CODER, REVIEWER, ARCHITECT])
    assert len(ollama.loads) == 3


def test_bad_input_names_the_field(served: Served, ollama: FakeOllama) -> None:
    bad = httpx.post(f"{served.url}/route", json={"prompt": "x", "urgency": "asap"})
    assert bad.status_code == 422 and bad.json()["error"].startswith("urgency:")
    empty = httpx.post(f"{served.url}/route", json={"task_type": "code"})
    assert empty.status_code == 422 and "prompt or messages" in empty.json()["error"]
    broken = httpx.post(f"{served.url}/api/chat", content=b"{not json")
    assert broken.status_code == 400 and "not valid JSON" in broken.json()["error"]
    nameless = httpx.post(f"{served.url}/api/chat", json={"messages": []})
    assert nameless.status_code == 400 and "model is required" in nameless.json()["error"]
    assert not ollama.chats


def test_health_models_memory(served: Served, ollama: FakeOllama) -> None:
    assert httpx.get(f"{served.url}/health").json()["status"] == "healthy"
    listed = httpx.get(f"{served.url}/models").json()
    assert [m["model"] for m in listed["models"]] == [ARCHITECT, CODER, REVIEWER]
    assert listed["routing_rules"]["implement"] == CODER
    httpx.post(f"{served.url}/reviewer", json={"prompt": "x"}, timeout=30)
    memory = httpx.get(f"{served.url}/memory").json()
    assert [r["model"] for r in memory["resident"]] == [REVIEWER]
    assert memory["used_bytes"] == ollama.resident()[REVIEWER]


# -- safety and faults ------------------------------------------------------------------------------


def test_client_disconnect_mid_stream_releases_the_hold(served: Served, ollama: FakeOllama) -> None:
    gate = threading.Event()
    ollama.script(REVIEWER, FakeReply("first then more", gate=gate, gate_after=1))
    try:
        with httpx.Client(base_url=served.url, timeout=10) as client, client.stream(
            "POST", "/api/chat", json={"model": REVIEWER, "messages": [{"role": "user", "content": "x"}]}
        ) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping the iterator would close the connection
            assert json.loads(next(lines))["message"]["content"] == "first "
            assert ollama.streaming.wait(10)
            assert served.pins() == {REVIEWER: 1}
        # The client went away: its hold is released at once, while Ollama is still generating.
        wait_until(lambda: served.pins() == {REVIEWER: 0})
    finally:
        gate.set()


def test_ollama_down_is_502_and_the_server_recovers() -> None:
    first = FakeOllama().start()
    port = int(first.url.rsplit(":", 1)[1])
    with running(serve_settings(first)) as s:
        client = ol.Client(host=s.url)
        assert client.chat(model=REVIEWER, messages=[{"role": "user", "content": "x"}]).message.content
        first.stop()  # and its open connections drop
        down = httpx.post(f"{s.url}/api/chat", timeout=30,
                          json={"model": REVIEWER, "messages": [{"role": "user", "content": "x"}]})
        assert down.status_code == 502 and "cannot reach Ollama" in down.json()["error"]
        # Ollama was never reached: a fleet's front may send the request to another host.
        assert down.headers["X-Crew-Unreachable"] == first.url
        assert httpx.get(f"{s.url}/health").json()["status"] == "unhealthy"
        back = FakeOllama(port).start()  # Ollama restarted, empty
        try:
            again = client.chat(model=REVIEWER, messages=[{"role": "user", "content": "y"}])
            assert again.message.content == "OK" and back.load_names() == [REVIEWER]
        finally:
            back.stop()


def test_ray_flag_without_ray_without_hosts_or_without_budgets_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], ollama: FakeOllama
) -> None:
    from crew.terminal.cli import main

    assert main(["serve", "--ray"]) == 2
    assert "set CREW_OLLAMA_HOSTS (comma-separated URLs) or add [[hosts]]" in capsys.readouterr().err
    monkeypatch.setenv("CREW_OLLAMA_HOSTS", f"gpu1={ollama.url}")
    assert main(["serve", "--ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "host gpu1 has no memory budget: give it memory_budget_gb" in err
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "40")
    monkeypatch.setitem(sys.modules, "ray", None)  # not installed: importing it fails
    assert main(["serve", "--ray"]) == 2
    assert capsys.readouterr().err == (
        "crew: crew serve --ray needs Ray Serve, which is not installed: pip install 'crew[ray]'\n")


def test_body_over_the_limit_is_413(ollama: FakeOllama) -> None:
    with running(serve_settings(ollama, serve_max_body_mb=0.001)) as s:
        big = httpx.post(f"{s.url}/api/chat", json={"model": REVIEWER, "messages": [
            {"role": "user", "content": "x" * 5000}]})
        assert big.status_code == 413 and "CREW_SERVE_MAX_BODY_MB" in big.json()["error"]
    assert not ollama.chats


def test_token_is_required_off_loopback_and_checked(ollama: FakeOllama) -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("0.0.0.0")
    with pytest.raises(SettingsError, match="CREW_SERVE_TOKEN"):
        check_exposure(load_settings(serve_host="0.0.0.0"))
    check_exposure(load_settings(serve_host="0.0.0.0", serve_token="s3cret"))
    with running(serve_settings(ollama, serve_token="s3cret")) as s:
        assert httpx.get(f"{s.url}/api/tags").status_code == 401
        assert httpx.get(f"{s.url}/api/tags", headers={"Authorization": "Bearer wrong"}).status_code == 401
        client = ol.Client(host=s.url, headers={"Authorization": "Bearer s3cret"})
        answer = client.chat(model=REVIEWER, messages=[{"role": "user", "content": "x"}])
        assert answer.message.content == "OK"


# -- operations ---------------------------------------------------------------------------------


def test_metrics_and_event_stream(served: Served, ollama: FakeOllama) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client, client.stream(
        "GET", "/crew/v1/events"
    ) as events:
        lines = events.iter_lines()
        assert next(lines) == "event: snapshot"
        httpx.post(f"{served.url}/coder", json={"prompt": "x"}, timeout=30)
        seen: list[str] = []
        for line in lines:
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            if "model_loaded" in seen:
                break
    assert seen[:2] == ["model_load_started", "model_loaded"]
    text = httpx.get(f"{served.url}/metrics").text
    assert f'crew_model_loads_total{{model="{CODER}"}} 1.0' in text
    assert 'crew_requests_total{route="/coder",status="200"} 1.0' in text
    assert f'crew_wait_seconds_count{{model="{CODER}"}} 1.0' in text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("crew_resident_bytes", (("model", CODER),))] == ollama.resident()[CODER]
    assert samples[("crew_budget_bytes", ())] == 60e9


# -- the process: start, drain, exit ------------------------------------------------------------


def test_sigterm_drains_in_flight_requests_and_hands_models_back(ollama: FakeOllama, clean_env) -> None:  # type: ignore[no-untyped-def]
    ollama.capacity = 60 * GB
    env = {**os.environ, "CREW_OLLAMA_HOST": ollama.url, "CREW_MEMORY_BUDGET_GB": "60", "CREW_LOG": ""}
    proc = subprocess.Popen([sys.executable, "-m", "crew", "serve", "--port", "0"], cwd=clean_env, env=env,
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        ready = proc.stderr.readline()  # type: ignore[union-attr]
        url = re.search(r"listening on (\S+)", ready)
        assert url, ready
        gate = threading.Event()
        ollama.script(REVIEWER, FakeReply("slow answer", gate=gate, gate_after=1))
        answers: list[str] = []

        def ask() -> None:
            with ol.Client(host=url.group(1)) as client:  # type: ignore[union-attr]
                answers.append("".join(p.message.content or "" for p in client.chat(
                    model=REVIEWER, messages=[{"role": "user", "content": "x"}], stream=True)))

        asker = threading.Thread(target=ask)
        asker.start()
        assert ollama.streaming.wait(20)
        proc.send_signal(signal.SIGTERM)
        gate.set()  # the request in flight finishes after the signal...
        asker.join(20)
        assert answers == ["slow answer"]  # ...and its answer arrives whole
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
    # The server handed its model back to Ollama's expiry (keep_alive_after) on the way out.
    last = [r for r in ollama.requests if r["body"] and r["body"].get("model") == REVIEWER][-1]
    assert last["body"]["keep_alive"] == "5m" and last["body"]["messages"] == []


def test_high_urgency_loads_before_queued_normal_requests(served: Served, ollama: FakeOllama) -> None:
    # The architect fills the budget; the reviewer (normal) and the coder (high) wait for it.
    gate = threading.Event()
    ollama.script(ARCHITECT, FakeReply("busy", gate=gate))
    results: dict[str, dict] = {}

    def post(name: str, path: str, body: dict) -> None:
        results[name] = httpx.post(f"{served.url}{path}", json=body, timeout=30).json()

    threads = [threading.Thread(target=post, args=("architect", "/architect", {"prompt": "hold"}))]
    threads[0].start()
    assert ollama.generating.wait(10)
    for name, body in (("normal", {"task_type": "review", "prompt": "a"}),
                       ("high", {"task_type": "code", "prompt": "b", "urgency": "high"})):
        thread = threading.Thread(target=post, args=(name, "/route", body))
        thread.start()
        threads.append(thread)
        wanted = REVIEWER if name == "normal" else CODER
        wait_until(lambda m=wanted: served.on_loop(lambda: served.authority.manager.waiting()).get(m) == 1)
    gate.set()
    for thread in threads:
        thread.join(30)
    assert results["high"]["model"] == CODER and results["normal"]["model"] == REVIEWER
    # Arrived second, loaded first.
    assert ollama.load_names() == [ARCHITECT, CODER, REVIEWER]


# -- crew as a client of crew serve -------------------------------------------------------------


def test_crew_run_through_a_server_does_no_loading_of_its_own(served: Served, ollama: FakeOllama,
                                                               clean_env) -> None:  # type: ignore[no-untyped-def]
    from crew.commands.run import run_spec
    from tests.helpers import run
    from tests.test_run import script_happy_path, write_spec

    server_events: list = []
    served.on_loop(lambda: served.authority.manager.subscribe(server_events.append))
    script_happy_path(ollama)
    events: list = []
    settings = load_settings(ollama_host=served.url, memory_budget_gb=60)
    outcome = run(run_spec(settings, write_spec(clean_env), render=events.append))
    assert outcome.approved
    kinds = [e.type for e in events]
    # The crew process started no load and unloaded nothing: the server did, for its requests.
    assert "model_load_started" not in kinds and "model_unloaded" not in kinds
    server_loads = [e.model for e in server_events if e.type == "model_loaded"]
    assert server_loads == ollama.load_names() and set(server_loads) == {ARCHITECT, CODER, REVIEWER}
    # Each load a request of this crew waited for is in its records; the rest were its prefetches.
    client_loads = [e for e in events if e.type == "model_loaded"]
    prefetched = [e.model for e in server_events if e.type == "model_loaded" and e.reason == "prefetch"]
    # (A request that joined one of its own prefetches while it loaded records that load too.)
    assert {e.model for e in client_loads} <= set(server_loads)
    assert len(client_loads) >= len(server_loads) - len(prefetched)
    assert client_loads and all("crew serve" in e.reason for e in client_loads)
    assert all(c["keep_alive"] == 300 and c["options"]["num_ctx"] == 32768 for c in ollama.chats)
    assert ollama.peak_used <= 60 * GB and not ollama.self_evictions()
    wait_until(lambda: bool(served.pins()) and all(p == 0 for p in served.pins().values()))


def test_a_clients_num_ctx_only_where_crew_toml_allows(ollama: FakeOllama, clean_env) -> None:  # type: ignore[no-untyped-def]
    from tests.fake_ollama import FakeModel

    ollama.reset(models=[*ollama.models.values(), FakeModel("other:7b", 4 * GB)])
    (clean_env / "crew.toml").write_text("serve_client_num_ctx = true\n")
    with running(serve_settings(ollama)) as s, ol.Client(host=s.url) as client:
        for num_ctx in (8192, 16384):  # the first request decides; the second cannot reload it
            client.chat(model="other:7b", messages=[{"role": "user", "content": "x"}],
                        options={"num_ctx": num_ctx})
        client.chat(model=REVIEWER, messages=[{"role": "user", "content": "x"}], options={"num_ctx": 8192})
    assert [c["options"]["num_ctx"] for c in ollama.chats] == [8192, 8192, 32768]  # roles: always theirs
    assert not ollama.option_reloads()


def test_a_client_that_leaves_while_waiting_leaves_the_queue(served: Served, ollama: FakeOllama) -> None:
    gate = threading.Event()
    ollama.script(ARCHITECT, FakeReply("busy", gate=gate))
    busy = threading.Thread(target=httpx.post, args=(f"{served.url}/architect",),
                            kwargs={"json": {"prompt": "hold"}, "timeout": 30})
    busy.start()
    try:
        assert ollama.generating.wait(10)
        host, port = served.url.removeprefix("http://").split(":")
        body = json.dumps({"model": REVIEWER, "messages": [{"role": "user", "content": "x"}]}).encode()
        with socket.create_connection((host, int(port)), timeout=10) as sock:  # a client that will leave
            sock.sendall(b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                         + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
            wait_until(lambda: served.on_loop(lambda: served.authority.manager.waiting()) == {REVIEWER: 1})
        # Gone: out of the queue at once, while the architect still holds the memory.
        wait_until(lambda: served.on_loop(lambda: served.authority.manager.waiting()) == {})
    finally:
        gate.set()
        busy.join(30)
    httpx.post(f"{served.url}/architect", json={"prompt": "again"}, timeout=30)
    assert ollama.load_names() == [ARCHITECT]  # the reviewer was never loaded for nobody
