"""The ResidencyManager against the fake Ollama server, judged by the server's own records."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import ollama
import pytest

from crew.backends.ollama import OllamaBackend
from crew.errors import (
    LoadTimeout,
    ModelNotPulled,
    ModelTooLarge,
    OllamaUnreachable,
    ResidencyDeadlock,
)
from crew.residency import ResidencyManager
from crew.residency.budget import GB, MemoryBudget
from tests.fake_ollama import FakeOllama
from tests.helpers import ARCHITECT, CODER, OPTIONS, REVIEWER, Recorder, make_manager, run


async def chat(fake: FakeOllama, model: str) -> None:
    """A real request for `model`, as a team member would send it (same options)."""
    async with ollama.AsyncClient(host=fake.url) as client:
        await client.chat(model=model, messages=[{"role": "user", "content": "hi"}],
                          options=OPTIONS, keep_alive=300)


def assert_server_kept_control(fake: FakeOllama) -> None:
    assert fake.peak_used <= fake.capacity, f"peak {fake.peak_used} over {fake.capacity}"
    assert fake.self_evictions() == [], "the server had to evict on its own"
    assert fake.option_reloads() == [], "a model was reloaded because options changed"
    assert fake.waited_for_unload == 0, "a load was sent before an unload had finished"


def test_load_is_an_empty_chat_with_the_roles_options_and_a_finite_lease(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            async with manager.hold(REVIEWER):
                assert REVIEWER in ollama.resident()
                await chat(ollama, REVIEWER)

    run(scenario())
    loads = [r["body"] for r in ollama.requests
             if r["path"] == "/api/chat" and r["body"]["messages"] == []]
    assert loads[0]["options"] == OPTIONS
    assert loads[0]["keep_alive"] == 300  # a lease (CREW_LEASE_S), never -1
    assert ollama.load_names() == [REVIEWER]
    assert ollama.option_reloads() == []
    assert not any(r["path"].startswith("/api/unload") for r in ollama.requests)


def test_a_team_conversation_loads_each_model_only_when_the_budget_forces_it(ollama: FakeOllama) -> None:
    sequence = [ARCHITECT, CODER, REVIEWER, CODER, REVIEWER, CODER, REVIEWER, ARCHITECT, CODER, REVIEWER]

    async def scenario() -> Recorder:
        async with make_manager(ollama) as manager:
            recorder = Recorder(manager)
            for model in sequence:
                async with manager.hold(model):
                    await chat(ollama, model)
            return recorder

    recorder = run(scenario())
    # The architect fits only alone; coder and reviewer stay together across their loop.
    assert ollama.load_names() == [ARCHITECT, CODER, REVIEWER, ARCHITECT, CODER, REVIEWER]
    assert_server_kept_control(ollama)
    evictions = [e for e in recorder.of("model_unloaded") if e.evicted_for]
    assert [(e.model, e.evicted_for) for e in evictions] == [
        (ARCHITECT, CODER), (CODER, ARCHITECT), (REVIEWER, ARCHITECT), (ARCHITECT, CODER),
    ]
    loaded = recorder.of("model_loaded")
    assert all(e.bytes == ollama.loads[i]["size"] for i, e in enumerate(loaded))
    assert all(e.seconds >= 0 and e.reason for e in loaded)


def test_an_unload_is_awaited_until_the_server_has_freed_the_memory(ollama: FakeOllama) -> None:
    ollama.unload_delay = 0.05  # the runner takes a while to exit after keep_alive 0

    async def scenario() -> None:
        async with make_manager(ollama, budget_gb=30) as manager:  # coder and reviewer swap
            for model in [CODER, REVIEWER, CODER, REVIEWER]:
                async with manager.hold(model):
                    await chat(ollama, model)

    run(scenario())
    assert ollama.load_names() == [CODER, REVIEWER, CODER, REVIEWER]
    assert [u["reason"] for u in ollama.unloads] == ["keep_alive"] * 3
    assert_server_kept_control(ollama)


def test_a_pinned_model_is_never_unloaded_and_the_waiter_wakes_on_release(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            recorder = Recorder(manager)
            release = asyncio.Event()

            async def coder_turn() -> None:
                async with manager.hold(CODER):
                    await release.wait()
                    assert CODER in ollama.resident()

            coder = asyncio.create_task(coder_turn())
            while CODER not in ollama.resident():
                await recorder.wait_for("model_loaded")
            architect = asyncio.create_task(chat_in_hold(manager, ARCHITECT))
            await recorder.wait_for("residency_waiting")
            assert ollama.load_names() == [CODER]
            assert [u["model"] for u in ollama.unloads] == []
            release.set()
            await asyncio.gather(coder, architect)

    async def chat_in_hold(manager: ResidencyManager, model: str) -> None:
        async with manager.hold(model):
            await chat(ollama, model)

    run(scenario())
    assert ollama.load_names() == [CODER, ARCHITECT]
    assert [u["model"] for u in ollama.unloads] == [CODER]
    assert_server_kept_control(ollama)


def test_fifty_concurrent_holds_on_three_models_finish_within_the_budget(ollama: FakeOllama) -> None:
    rng = random.Random(7)
    models = [rng.choice([ARCHITECT, CODER, REVIEWER]) for _ in range(50)]
    violations: list[str] = []

    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            async def request(model: str) -> None:
                async with manager.hold(model):
                    if model not in ollama.resident():
                        violations.append(f"{model} not resident during its hold")
                    await chat(ollama, model)

            # A guard against a hang, not a timing assertion.
            await asyncio.wait_for(asyncio.gather(*(request(m) for m in models)), timeout=120)

    run(scenario())
    assert violations == []
    assert len(ollama.chats) == 50
    assert_server_kept_control(ollama)
    # Grouping by resident model keeps loads far below one per request.
    assert len(ollama.loads) <= 20


def test_requests_for_one_model_share_one_load(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            async def request() -> None:
                async with manager.hold(REVIEWER):
                    await chat(ollama, REVIEWER)

            await asyncio.gather(*(request() for _ in range(10)))

    run(scenario())
    assert ollama.load_names() == [REVIEWER]
    assert len(ollama.chats) == 10


def test_queued_work_for_the_resident_model_goes_first_but_a_waiting_load_is_not_starved(
    ollama: FakeOllama,
) -> None:
    order: list[str] = []
    events: list[object] = []

    async def scenario() -> None:
        async with make_manager(ollama, fairness=2) as manager:
            recorder = Recorder(manager)
            release = asyncio.Event()

            entered = asyncio.Event()

            async def turn(model: str, wait: asyncio.Event | None = None) -> None:
                async with manager.hold(model):
                    order.append(model)
                    entered.set()
                    if wait is not None:
                        await wait.wait()

            first = asyncio.create_task(turn(CODER, release))
            await entered.wait()
            architect = asyncio.create_task(turn(ARCHITECT))
            await recorder.wait_for("residency_waiting")
            # Work for the resident coder is served past the waiting architect ...
            await turn(CODER)
            await turn(CODER)
            # ... until the bound: the third waits behind the architect.
            late = asyncio.create_task(turn(CODER))
            await recorder.wait_for("residency_waiting", 2)
            assert order == [CODER, CODER, CODER]
            assert recorder.of("residency_waiting")[1].blocked_by == [ARCHITECT]
            release.set()
            await asyncio.gather(first, architect, late)
            events.extend(recorder.events)

    run(scenario())
    assert order == [CODER, CODER, CODER, ARCHITECT, CODER], events
    assert ollama.load_names() == [CODER, ARCHITECT, CODER]
    assert_server_kept_control(ollama)


def test_eviction_prefers_the_model_idle_longest_relative_to_its_reload_cost(ollama: FakeOllama) -> None:
    offset = [0.0]

    def clock() -> float:
        return time.monotonic() + offset[0]

    async def scenario() -> None:
        # 40 GB: coder + reviewer fit (37.6); the small extra model fits beside only one.
        async with make_manager(ollama, budget_gb=40, clock=clock) as manager:
            manager.register("qwen3:4b", OPTIONS)
            for model in [CODER, REVIEWER]:
                async with manager.hold(model):
                    pass
            offset[0] += 600  # the coder sat idle ten minutes ...
            async with manager.hold(REVIEWER):  # ... while the reviewer was just used
                pass
            offset[0] += 1
            async with manager.hold("qwen3:4b"):
                pass

    from tests.fake_ollama import FakeModel, default_catalog

    ollama.reset(default_catalog() + [FakeModel("qwen3:4b", int(2.5 * GB), parameter_size="4.0B",
                                                block_count=36, head_count=32, key_length=128)])
    run(scenario())
    assert [u["model"] for u in ollama.unloads] == [CODER]
    assert_server_kept_control(ollama)


def test_foreign_loads_and_unloads_are_noticed(ollama: FakeOllama) -> None:
    async def scenario() -> Recorder:
        async with make_manager(ollama, budget_gb=40) as manager:
            recorder = Recorder(manager)
            ollama.preload(CODER, num_ctx=32768)  # loaded by hand
            async with manager.hold(REVIEWER):  # fits beside it: 22.5 + 15.1 of 40
                pass
            ollama.expire(REVIEWER)  # someone ran `ollama stop qwen3:14b`
            async with manager.hold(REVIEWER):  # must load again, not trust its memory
                pass
            return recorder

    recorder = run(scenario())
    assert ollama.load_names() == [REVIEWER, REVIEWER]
    assert [e.model for e in recorder.of("model_appeared")] == [CODER]
    assert [e.model for e in recorder.of("model_vanished")] == [REVIEWER]
    assert ollama.self_evictions() == []


def test_a_copy_loaded_by_someone_else_with_another_num_ctx_is_replaced_not_reloaded(
    ollama: FakeOllama,
) -> None:
    ollama.preload(REVIEWER, num_ctx=4096)

    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            async with manager.hold(REVIEWER):
                await chat(ollama, REVIEWER)

    run(scenario())
    assert [u["model"] for u in ollama.unloads] == [REVIEWER]  # crew unloaded it explicitly
    assert ollama.loads[-1]["options"]["num_ctx"] == 32768
    assert ollama.option_reloads() == []


def test_ollama_restarting_between_calls_leaves_no_stale_state(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama, budget_gb=30) as manager:
            async with manager.hold(CODER):
                await chat(ollama, CODER)
            ollama.restart()
            # Believing the coder still resident, crew would evict it first; it must not.
            async with manager.hold(REVIEWER):
                await chat(ollama, REVIEWER)
            async with manager.hold(CODER):
                await chat(ollama, CODER)

    run(scenario())
    assert ollama.load_names() == [CODER, REVIEWER, CODER]
    unload_requests = [r for r in ollama.requests
                       if r["path"] == "/api/chat" and r["body"].get("keep_alive") == 0]
    assert [r["body"]["model"] for r in unload_requests] == [REVIEWER]
    assert_server_kept_control(ollama)


def test_a_model_that_is_not_pulled_names_the_pull_command(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            manager.register("ghost:7b", OPTIONS)
            async with manager.hold("ghost:7b"):
                pass

    with pytest.raises(ModelNotPulled, match=r"`ollama pull ghost:7b`"):
        run(scenario())
    assert ollama.loads == []


def test_a_model_larger_than_the_budget_fails_before_anything_loads(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama, budget_gb=48) as manager:
            async with manager.hold(CODER):
                pass
            async with manager.hold(ARCHITECT):
                pass

    with pytest.raises(ModelTooLarge) as raised:
        run(scenario())
    assert ollama.load_names() == [CODER]
    assert ollama.unloads == []
    message = str(raised.value)
    assert "smaller model" in message and "CREW_MEMORY_BUDGET_GB" in message
    assert "num_ctx=" not in message  # its weights alone are over 48 GB: no num_ctx would fit it


def test_the_advice_to_lower_num_ctx_names_a_value_that_fits(ollama: FakeOllama) -> None:
    from crew.residency import advice

    async def scenario() -> int:
        async with make_manager(ollama, budget_gb=24, register=False) as manager:
            manager.register(CODER, {"num_ctx": 262144})
            facts = await manager.facts(CODER)
            with pytest.raises(ModelTooLarge) as raised:
                async with manager.hold(CODER):
                    pass
        suggested = int(str(raised.value).split("set its num_ctx=")[1].split(";")[0])
        assert facts.estimate_size({"num_ctx": suggested}) <= 24 * GB
        assert facts.estimate_size({"num_ctx": suggested + 1024}) > 24 * GB
        assert advice.fitting_num_ctx(facts, 24 * GB) == suggested
        async with make_manager(ollama, budget_gb=24, register=False) as again:
            again.register(CODER, {"num_ctx": suggested})
            async with again.hold(CODER):  # and at that value it loads, within the budget
                pass
        return suggested

    assert run(scenario()) % 1024 == 0
    assert ollama.load_names() == [CODER]
    assert ollama.peak_used <= 24 * GB


def test_partial_offload_when_allowed_runs_the_model_alone_with_a_warning(ollama: FakeOllama) -> None:
    ollama.system_memory = 96 * GB

    async def scenario() -> Recorder:
        async with make_manager(ollama, budget_gb=48, allow_partial_offload=True) as manager:
            recorder = Recorder(manager)
            for model in [CODER, REVIEWER, ARCHITECT, CODER]:
                async with manager.hold(model):
                    assert set(ollama.resident()) >= {model}
                    await chat(ollama, model)
            return recorder

    recorder = run(scenario())
    assert ollama.load_names() == [CODER, REVIEWER, ARCHITECT, CODER]
    assert [u["model"] for u in ollama.unloads] == [CODER, REVIEWER, ARCHITECT]
    assert ollama.self_evictions() == []
    warnings = recorder.of("residency_warning")
    assert warnings and "partly on the CPU" in warnings[0].message
    assert [e.partial_offload for e in recorder.of("model_loaded")] == [False, False, True, False]


def test_a_load_that_times_out_fails_clearly_and_the_next_decision_rereads_ollama(
    ollama: FakeOllama,
) -> None:
    gate = threading.Event()
    ollama.load_gate = gate

    async def scenario() -> None:
        async with make_manager(ollama, load_timeout=0.05) as manager:
            with pytest.raises(LoadTimeout, match="CREW_LOAD_TIMEOUT_S"):
                async with manager.hold(REVIEWER):
                    pass
            gate.set()  # the server finishes the load it had started
            async with manager.hold(REVIEWER):
                await chat(ollama, REVIEWER)

    run(scenario())
    assert REVIEWER in ollama.resident()
    assert ollama.load_names() == [REVIEWER]  # the load the server had started, never a second
    assert_server_kept_control(ollama)


def test_unreachable_ollama_names_the_host_and_how_to_start_it(dead_host: str) -> None:
    async def scenario() -> None:
        manager = ResidencyManager(OllamaBackend(dead_host), MemoryBudget(48 * GB, "test"))
        manager.register(REVIEWER, OPTIONS)
        async with manager.hold(REVIEWER):
            pass

    with pytest.raises(OllamaUnreachable) as info:
        run(scenario())
    assert dead_host in str(info.value) and "ollama serve" in str(info.value)


def test_holds_are_released_on_error_and_on_cancellation(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            with pytest.raises(ValueError):
                async with manager.hold(CODER):
                    raise ValueError("the agent failed")
            entered = asyncio.Event()

            async def stuck() -> None:
                async with manager.hold(REVIEWER):
                    entered.set()
                    await asyncio.Event().wait()

            task = asyncio.create_task(stuck())
            await entered.wait()
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert all(view.pins == 0 for view in manager.snapshot().slots)
            async with manager.hold(ARCHITECT):  # must evict both: possible only if unpinned
                pass

    run(scenario())
    assert sorted(u["model"] for u in ollama.unloads) == sorted([CODER, REVIEWER])
    assert_server_kept_control(ollama)


def test_waiting_on_room_that_the_same_task_holds_is_an_error_not_a_hang(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            async with manager.hold(CODER):
                async with manager.hold(ARCHITECT):
                    pass

    with pytest.raises(ResidencyDeadlock, match="same task"):
        run(scenario())


def test_a_cancelled_request_does_not_lose_count_of_a_load_in_flight(ollama: FakeOllama) -> None:
    gate = threading.Event()
    ollama.load_gate = gate

    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            recorder = Recorder(manager)

            async def request() -> None:
                async with manager.hold(REVIEWER):
                    pass

            task = asyncio.create_task(request())
            await recorder.wait_for("model_load_started")
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            gate.set()
            await recorder.wait_for("model_loaded")
            views = {v.name: v for v in manager.snapshot().slots}
            assert views[REVIEWER].state == "resident" and views[REVIEWER].pins == 0
            assert manager.snapshot().used == ollama.resident()[REVIEWER]

    run(scenario())


def test_prefetch_loads_only_into_free_room_and_never_evicts(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            recorder = Recorder(manager)
            async with manager.hold(CODER):
                assert await manager.prefetch(REVIEWER) is True
                await recorder.wait_for("model_loaded", 2)
                assert await manager.prefetch(ARCHITECT) is False

    run(scenario())
    assert ollama.load_names() == [CODER, REVIEWER]
    assert ollama.unloads == []


def test_closing_hands_models_back_to_ollamas_expiry_without_unloading(ollama: FakeOllama) -> None:
    async def scenario() -> None:
        async with make_manager(ollama) as manager:
            async with manager.hold(REVIEWER):
                pass

    run(scenario())
    assert REVIEWER in ollama.resident()
    assert ollama.runners[REVIEWER].keep_alive == 300.0
    assert ollama.unloads == [] and ollama.option_reloads() == []


def test_a_reconcile_ttl_spares_reads_for_resident_models_but_never_for_loads(ollama: FakeOllama) -> None:
    def ps_reads() -> int:
        return sum(1 for r in ollama.requests if r["path"] == "/api/ps")

    async def scenario() -> tuple[int, int]:
        async with make_manager(ollama, reconcile_ttl=60.0) as manager:
            async with manager.hold(REVIEWER):
                pass
            before = ps_reads()
            for _ in range(5):
                async with manager.hold(REVIEWER):
                    pass
            resident_reads = ps_reads() - before
            ollama.preload(ARCHITECT, num_ctx=4096)  # appears behind crew's back
            before = ps_reads()
            async with manager.hold(CODER):  # a load: must read, and so must see the architect
                pass
            return resident_reads, ps_reads() - before

    resident_reads, load_reads = run(scenario())
    assert resident_reads == 0
    assert load_reads >= 1  # a load reads /api/ps fresh (more reads follow: unload polling)
    assert ARCHITECT in [u["model"] for u in ollama.unloads]  # counted, then evicted for room
    assert ollama.self_evictions() == []


def test_a_crew_evicts_its_own_idle_model_before_one_another_live_crew_keeps(
    ollama: FakeOllama, clean_env: object
) -> None:
    from crew.settings import load_settings
    from tests.fake_ollama import FakeModel
    from tests.helpers import manager_for

    ollama.reset([FakeModel("m1:a", 5 * GB), FakeModel("m2:b", 15 * GB), FakeModel("m3:c", 12 * GB)],
                 capacity=30 * GB, load_seconds_per_gb=0.005)
    settings = load_settings(ollama_host=ollama.url, memory_budget_gb=30, backend="ollama")
    options = {"num_ctx": 2048}

    async def scenario() -> None:
        crew_a = (await manager_for(settings, "crew-a"))[0]  # two crews, as two processes would be
        crew_a.register("m1:a", options)
        async with crew_a.hold("m1:a"):
            pass  # crew A keeps m1 (idle now, but its run goes on)
        crew_b = (await manager_for(settings, "crew-b"))[0]
        for model in ("m1:a", "m2:b", "m3:c"):
            crew_b.register(model, options)
            await crew_b.facts(model)  # it knows m1's real reload time, which is the cheapest
        async with crew_b.hold("m2:b"):
            pass
        async with crew_b.hold("m3:c"):  # room for m3: evicting m1 or m2 would do
            pass
        await crew_b.aclose()
        await crew_a.aclose()

    run(scenario())
    assert [u["model"] for u in ollama.unloads] == ["m2:b"]  # its own, not crew A's m1
    assert ollama.peak_used <= 30 * GB and ollama.self_evictions() == []


def test_a_model_another_client_still_uses_is_waited_for_not_an_error(ollama: FakeOllama) -> None:
    """Without crew serve: another crew's model is evicted while its request still runs on Ollama.
    The unload waits for that request (bounded by the load timeout) and says why; no error."""
    from tests.fake_ollama import FakeReply

    gate = threading.Event()
    ollama.script(CODER, FakeReply("long answer", gate=gate))

    async def main() -> list[str]:
        other = make_manager(ollama, busy_notice_s=0.01)
        mine = make_manager(ollama, busy_notice_s=0.01)
        recorder = Recorder(mine)
        async with other.hold(CODER):
            client = ollama_client(ollama)
            request = asyncio.ensure_future(asyncio.to_thread(
                client.chat, model=CODER, messages=[{"role": "user", "content": "x"}], options=OPTIONS))
            await asyncio.to_thread(ollama.generating.wait, 10)
        # `other` released its hold, but its request is still running on Ollama.
        loading = asyncio.ensure_future(_use(mine, ARCHITECT))
        await recorder.wait_for("residency_waiting", timeout=10)
        gate.set()
        await asyncio.wait_for(request, 10)
        await asyncio.wait_for(loading, 10)
        client.close()
        await other.aclose()
        await mine.aclose()
        return [e.blocked_by[0] for e in recorder.of("residency_waiting")]

    blocked = run(main())
    assert "another client is still using it" in blocked[0]
    assert ollama.load_names() == [CODER, ARCHITECT] and not ollama.self_evictions()
    assert ollama.peak_used <= 60 * GB


def ollama_client(fake: FakeOllama) -> ollama.Client:
    return ollama.Client(host=fake.url)


async def _use(manager: ResidencyManager, model: str) -> None:
    async with manager.hold(model):
        pass


def test_crews_sharing_an_ollama_without_a_server_are_told_to_use_one(ollama: FakeOllama) -> None:
    from crew.settings import load_settings
    from tests.helpers import manager_for

    ollama.capacity = 60 * GB
    settings = load_settings(ollama_host=ollama.url, memory_budget_gb=60)

    async def scenario() -> list[str]:
        other, _ = await manager_for(settings, "other-run")
        mine, _ = await manager_for(settings, "my-run")
        for manager in (other, mine):
            for model in (ARCHITECT, CODER, REVIEWER):
                manager.register(model, OPTIONS)
        recorder = Recorder(mine)
        async with other.hold(CODER):
            pass  # the other crew keeps the coder (its note says so)
        async with mine.hold(ARCHITECT):  # needs the coder's room
            pass
        await other.aclose()
        await mine.aclose()
        return [e.message for e in recorder.of("residency_warning")]

    warnings = run(scenario())
    assert len(warnings) == 1 and "crew serve" in warnings[0] and CODER in warnings[0]
