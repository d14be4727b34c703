"""RoutedOllamaClient on the fake server: a hold around every call; the stock client's defects fixed."""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest
from autogen_core import FunctionCall
from autogen_core.models import (
    AssistantMessage,
    CreateResult,
    FunctionExecutionResult,
    FunctionExecutionResultMessage,
    SystemMessage,
    UserMessage,
)

from crew.clients.convert import ThinkSplitter
from crew.clients.ollama import RoutedOllamaClient
from crew.errors import ModelCapabilityError, RequestTimeout, StreamInterrupted
from crew.events import Event
from crew.residency import ResidencyManager
from crew.settings import RoleSettings
from tests.fake_ollama import FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER, make_manager, run

T = TypeVar("T")
ASK = [SystemMessage(content="You review code."), UserMessage(content="Is 1 + 1 == 2?", source="user")]


def with_client(
    fake: FakeOllama,
    model: str,
    body: Callable[[RoutedOllamaClient, ResidencyManager], Awaitable[T]],
    events: list[Event] | None = None,
    **role: Any,
) -> T:
    async def scenario() -> T:
        async with make_manager(fake, register=False) as manager:
            facts = await manager.facts(model)
            settings = RoleSettings(model=model, **role)
            client = RoutedOllamaClient(manager, "reviewer", settings, facts, backend=manager.backend,
                                        emit=events.append if events is not None else None)
            try:
                return await body(client, manager)
            finally:
                await client.close()

    return run(scenario())


def test_create_runs_inside_a_hold_with_the_preloads_options(ollama: FakeOllama) -> None:
    ollama.script(REVIEWER, FakeReply(content="Yes.", thinking="1 + 1 is 2"))
    events: list[Event] = []

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> CreateResult:
        return await client.create(ASK)

    result = with_client(ollama, REVIEWER, body, events, num_ctx=16384, seed=3)
    assert result.content == "Yes." and result.thought == "1 + 1 is 2"
    # The fake counts a token per word: 5 of thinking, 1 of answer.
    assert result.usage.completion_tokens == 5 + 1 and result.usage.prompt_tokens > 0
    assert ollama.load_names() == [REVIEWER]
    chat = ollama.chats[0]
    assert chat["options"] == {"num_ctx": 16384, "temperature": 0.2, "seed": 3}
    assert ollama.loads[0]["options"]["num_ctx"] == 16384
    assert chat["keep_alive"] == 300 and chat["think"] is True
    assert ollama.option_reloads() == []
    call = [e for e in events if e.type == "model_call"][0]
    assert (call.prompt_tokens, call.completion_tokens) == (
        result.usage.prompt_tokens, result.usage.completion_tokens)


@pytest.mark.parametrize(("model", "think", "sent"), [
    (REVIEWER, None, True), (REVIEWER, False, False), (CODER, None, "absent"), (CODER, False, "absent"),
])
def test_think_is_sent_only_to_models_that_support_it(
    ollama: FakeOllama, model: str, think: bool | None, sent: object
) -> None:
    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> CreateResult:
        return await client.create(ASK)

    with_client(ollama, model, body, think=think)
    chat = ollama.chats[0]
    assert (chat["think"] if chat["think"] is not None else "absent") == sent


def test_forcing_think_on_a_model_without_it_says_which_setting_to_change(ollama: FakeOllama) -> None:
    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> CreateResult:
        return await client.create(ASK)

    with pytest.raises(ModelCapabilityError, match="THINK=false"):
        with_client(ollama, CODER, body, think=True)


def test_inline_think_text_goes_to_thought_and_never_into_content(ollama: FakeOllama) -> None:
    text = "<think>check the sum</think>Yes, it is."
    ollama.script(REVIEWER, FakeReply(content=text), FakeReply(content=text, chunks=9))

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> tuple[Any, list[Any]]:
        whole = await client.create(ASK)
        parts = [part async for part in client.create_stream(ASK)]
        return whole, parts

    whole, parts = with_client(ollama, REVIEWER, body, think=False)
    assert whole.content == "Yes, it is." and whole.thought == "check the sum"
    final = parts[-1]
    assert isinstance(final, CreateResult)
    assert final.content == "Yes, it is." and final.thought == "check the sum"
    assert "think" not in "".join(p for p in parts[:-1] if isinstance(p, str))


def test_think_splitter_handles_tags_split_across_chunks() -> None:
    splitter = ThinkSplitter()
    pieces = [splitter.feed(c) for c in ["Hi <th", "ink>sec", "ret</thi", "nk> there"]]
    pieces.append(splitter.flush())
    assert "".join(v for v, _ in pieces) == "Hi  there"
    assert "".join(h for _, h in pieces) == "secret"


def test_a_single_chunk_stream_keeps_its_content_and_counts(ollama: FakeOllama) -> None:
    ollama.script(REVIEWER, FakeReply(content="All tests pass.", chunks=1))

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> list[Any]:
        return [part async for part in client.create_stream(ASK)]

    parts = with_client(ollama, REVIEWER, body, think=False)
    assert parts[0] == "All tests pass."
    assert parts[-1].content == "All tests pass." and parts[-1].usage.completion_tokens == 1


def test_tool_calls_come_back_as_function_calls_and_results_keep_the_tool_name(ollama: FakeOllama) -> None:
    ollama.script(REVIEWER, FakeReply(content="", tool_calls=[
        {"name": "read_file", "arguments": {"path": "app.py"}}]))

    def read_file(path: str) -> str:
        """Read a file of the workspace."""
        return "print('hi')"

    from autogen_core.tools import FunctionTool

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> CreateResult:
        first = await client.create(ASK, tools=[FunctionTool(read_file, description="Read a file.")])
        assert isinstance(first.content, list)
        history = [*ASK, AssistantMessage(content=first.content, source="reviewer"),
                   FunctionExecutionResultMessage(content=[FunctionExecutionResult(
                       content="print('hi')", name="read_file", call_id=first.content[0].id)]),
                   AssistantMessage(content=[FunctionCall(id="x", name="read_file", arguments="{not json")],
                                    source="reviewer"),
                   UserMessage(content="Looks fine?", source="Coder")]
        await client.create(history)
        return first

    first = with_client(ollama, REVIEWER, body)
    assert first.finish_reason == "function_calls"
    assert first.content[0].name == "read_file" and first.content[0].arguments == '{"path": "app.py"}'
    tools = ollama.chats[0]["tools"]
    assert tools[0]["function"]["parameters"]["properties"]["path"]["type"] == "string"
    sent = ollama.chats[1]["messages"]
    assert {"role": "tool", "content": "print('hi')", "tool_name": "read_file"} in sent
    assert sent[-1]["content"].startswith("[Coder]\n")  # speaker names survive
    assert sent[-2]["tool_calls"][0]["function"]["arguments"] == {"_raw": "{not json"}


def test_the_hold_lasts_until_a_stream_is_consumed_or_closed(ollama: FakeOllama) -> None:
    ollama.script(REVIEWER, FakeReply(content="one two three"), FakeReply(content="four five six"))

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> None:
        stream = client.create_stream(ASK)
        assert await stream.__anext__() == "one "
        assert [v.pins for v in manager.snapshot().slots] == [1]
        _ = [part async for part in stream]
        assert [v.pins for v in manager.snapshot().slots] == [0]
        early = client.create_stream(ASK)
        await early.__anext__()
        await early.aclose()  # the agent stopped reading (cancelled turn)
        assert [v.pins for v in manager.snapshot().slots] == [0]

    with_client(ollama, REVIEWER, body, think=False)


def test_a_request_longer_than_its_timeout_fails_clearly(ollama: FakeOllama) -> None:
    gate = threading.Event()
    ollama.script(REVIEWER, FakeReply(content="late", gate=gate))

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> None:
        try:
            with pytest.raises(RequestTimeout, match="TIMEOUT_S"):
                await client.create(ASK)
            assert [v.pins for v in manager.snapshot().slots] == [0]
        finally:
            gate.set()

    with_client(ollama, REVIEWER, body, timeout_s=0.2)


def test_a_stream_cut_by_the_server_is_a_clear_error_and_releases_the_hold(ollama: FakeOllama) -> None:
    ollama.script(REVIEWER, FakeReply(content="a b c d e", cut_after=2))

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> None:
        with pytest.raises(StreamInterrupted, match="closed the connection"):
            _ = [part async for part in client.create_stream(ASK)]
        assert [v.pins for v in manager.snapshot().slots] == [0]

    with_client(ollama, REVIEWER, body, think=False)


def test_token_counts_work_offline_and_model_info_covers_qwen3_coder(ollama: FakeOllama) -> None:
    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> None:
        used = client.count_tokens(ASK)
        assert 5 < used < 100
        assert client.remaining_tokens(ASK) == 8192 - used
        assert client.model_info["function_calling"] is True
        assert client.model_info["family"] == "unknown"

    with_client(ollama, CODER, body, num_ctx=8192)
    assert ollama.chats == []  # nothing had to be asked of the server


def test_a_real_autogen_agent_uses_tools_through_the_routed_client(ollama: FakeOllama) -> None:
    from autogen_agentchat.agents import AssistantAgent

    calls: list[str] = []

    def add(a: int, b: int) -> int:
        """Add two numbers."""
        calls.append(f"{a}+{b}")
        return a + b

    ollama.script(CODER, FakeReply(content="", tool_calls=[{"name": "add", "arguments": {"a": 2, "b": 3}}]),
                  FakeReply(content="The sum is 5."))

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> str:
        agent = AssistantAgent("coder", model_client=client, tools=[add], reflect_on_tool_use=True,
                               system_message="You add numbers.")
        result = await agent.run(task="What is 2 + 3?")
        return str(result.messages[-1].content)

    assert with_client(ollama, CODER, body) == "The sum is 5."
    assert calls == ["2+3"]
    assert len(ollama.chats) == 2 and ollama.load_names() == [CODER]


@pytest.mark.parametrize("streamed", [False, True])
def test_an_interrupt_while_waiting_for_the_model_means_no_request_at_all(
    ollama: FakeOllama, streamed: bool
) -> None:
    """Ctrl-C while a call waits for its model: the cut finds no connection to close, so the call
    must not start once the model is granted (it would run, unseen, past the interrupt)."""
    import asyncio

    async def body(client: RoutedOllamaClient, manager: ResidencyManager) -> None:
        manager.register(ARCHITECT, {"num_ctx": 32768})
        blocker = await manager.acquire(ARCHITECT, "someone else")  # the room the reviewer needs
        asking = asyncio.ensure_future(
            _drain(client.create_stream(ASK)) if streamed else client.create(ASK))
        while not manager.waiting():  # guard: the call is queued behind the blocker
            await asyncio.sleep(0)
        await client.interrupt()
        manager.release(blocker)
        with pytest.raises(StreamInterrupted, match="interrupted"):
            await asyncio.wait_for(asking, 10)

    with_client(ollama, REVIEWER, body)
    assert [c["model"] for c in ollama.chats] == []


async def _drain(stream: Any) -> None:
    async for _ in stream:
        pass
