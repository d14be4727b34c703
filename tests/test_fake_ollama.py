"""The fake server behaves like Ollama where crew depends on it (notes/ollama-facts.md)."""

from __future__ import annotations

import asyncio
import threading

import httpx
import ollama as ollama_client
import pytest

from crew.residency.budget import GB
from tests.fake_ollama import FakeOllama, FakeReply
from tests.helpers import CODER, REVIEWER, run


def client(fake: FakeOllama) -> ollama_client.AsyncClient:
    return ollama_client.AsyncClient(host=fake.url)


def test_a_request_without_num_ctx_after_a_preload_with_it_reloads(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with client(ollama) as c:
            await c.chat(model=REVIEWER, messages=[], options={"num_ctx": 16384}, keep_alive=-1)
            await c.chat(model=REVIEWER, messages=[{"role": "user", "content": "hi"}])

    run(scenario())
    assert [u["reason"] for u in ollama.option_reloads()] == ["reload"]
    # Without num_ctx, 48 GB (44.7 GiB) of VRAM gets Ollama's 32k default.
    assert ollama.loads[-1]["options"]["num_ctx"] == 32768


def test_it_evicts_by_shortest_keep_alive_not_by_recency(ollama: FakeOllama) -> None:
    ollama.reset(capacity=40 * GB)

    async def scenario() -> None:
        async with client(ollama) as c:
            await c.chat(model=CODER, messages=[], options={"num_ctx": 32768}, keep_alive=-1)
            await c.chat(model=REVIEWER, messages=[], options={"num_ctx": 32768}, keep_alive="10m")
            # LRU would evict the coder first; Ollama evicts the shortest keep_alive first.
            await c.chat(model="qwen3-coder-next:q4_K_M", messages=[], options={"num_ctx": 4096})

    ollama.system_memory = 96 * GB
    run(scenario())
    assert [e["model"] for e in ollama.self_evictions()] == [REVIEWER, CODER]


def test_unload_returns_at_once_but_memory_frees_after_running_requests(ollama: FakeOllama) -> None:
    gate = threading.Event()
    ollama.script(REVIEWER, FakeReply(content="slow answer", gate=gate))

    async def scenario() -> None:
        async with client(ollama) as c:
            busy = asyncio.create_task(c.chat(
                model=REVIEWER, messages=[{"role": "user", "content": "x"}], options={"num_ctx": 8192}
            ))
            await asyncio.to_thread(ollama.generating.wait)  # the server says it is generating
            reply = await c.chat(model=REVIEWER, messages=[], keep_alive=0)
            assert reply.done_reason == "unload"
            assert REVIEWER in {m.name for m in (await c.ps()).models}
            assert ollama.unloads == []
            gate.set()
            await busy

    run(scenario())
    assert ollama.wait_gone(REVIEWER)
    assert [u["reason"] for u in ollama.unloads] == ["keep_alive"]


def test_keep_alive_strings_need_a_unit(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with client(ollama) as c:
            await c.chat(model=REVIEWER, messages=[], keep_alive="300")

    with pytest.raises(ollama_client.ResponseError, match="missing unit"):
        run(scenario())


def test_thinking_and_tools_are_refused_where_the_model_lacks_them(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with client(ollama) as c:
            await c.chat(model=CODER, messages=[{"role": "user", "content": "x"}], think=True)

    with pytest.raises(ollama_client.ResponseError) as info:
        run(scenario())
    assert info.value.status_code == 400 and "does not support thinking" in info.value.error


def test_streams_carry_thinking_tool_calls_and_final_counts(ollama: FakeOllama) -> None:
    ollama.script(REVIEWER, FakeReply(content="all good", thinking="let me see",
                                      tool_calls=[{"name": "read_file", "arguments": {"path": "a.py"}}]))

    async def scenario() -> list[ollama_client.ChatResponse]:
        async with client(ollama) as c:
            stream = await c.chat(model=REVIEWER, stream=True, think=True,
                                  messages=[{"role": "user", "content": "review"}])
            return [part async for part in stream]

    parts = run(scenario())
    assert "".join(p.message.thinking or "" for p in parts) == "let me see"
    assert "".join(p.message.content or "" for p in parts) == "all good"
    calls = [c for p in parts for c in (p.message.tool_calls or [])]
    assert calls[0].function.name == "read_file" and calls[0].function.arguments == {"path": "a.py"}
    assert parts[-1].done and parts[-1].eval_count == 5 and parts[-1].prompt_eval_count


def test_a_cut_stream_and_an_error_line_reach_the_client(ollama: FakeOllama) -> None:
    ollama.script(REVIEWER, FakeReply(content="a b c d", cut_after=2),
                  FakeReply(content="a b c d", error_after=1, error="model crashed"))

    async def consume() -> None:
        async with client(ollama) as c:
            stream = await c.chat(model=REVIEWER, stream=True,
                                  messages=[{"role": "user", "content": "x"}])
            async for _ in stream:
                pass

    with pytest.raises(httpx.RemoteProtocolError):
        run(consume())
    with pytest.raises(ollama_client.ResponseError, match="model crashed"):
        run(consume())


def test_a_model_too_large_for_memory_is_an_out_of_memory_500(ollama: FakeOllama) -> None:
    ollama.reset(capacity=20 * GB, system_memory=30 * GB)

    async def scenario() -> None:
        async with client(ollama) as c:
            await c.chat(model="qwen3-coder-next:q4_K_M", messages=[])

    with pytest.raises(ollama_client.ResponseError) as info:
        run(scenario())
    assert info.value.status_code == 500 and "more system memory" in info.value.error
