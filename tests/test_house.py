"""The seams: a backend added through the registry, holds owned by any owner, the eviction rule
on its own, one session lifecycle on every exit path."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from crew.backends import BackendKind, ModelFacts, Resident, register
from crew.backends.registry import unregister
from crew.backends.simulated import SimulatedBackend
from crew.clients import Ask, ModelClient, Piece
from crew.clients.factory import register_client, unregister_client
from crew.errors import ResidencyDeadlock
from crew.residency import Candidate, CheapestReload, ResidencyManager, WorkflowAware
from crew.residency.budget import GB, MemoryBudget
from crew.settings import Role, RoleSettings, Settings
from crew.terminal.cli import main
from tests.fake_ollama import FakeOllama
from tests.helpers import ARCHITECT, CODER, REVIEWER, Recorder, make_manager, run

# -- the eviction rule, without a manager -----------------------------------------------------


def candidate(name: str, gb: float, reload_s: float, idle_s: float = 0.0,
              elsewhere: bool = False, next_use: float | None = None) -> Candidate:
    return Candidate(name, int(gb * GB), reload_s, idle_s, elsewhere, next_use)


def names(chosen: list[Candidate] | None) -> list[str] | None:
    return None if chosen is None else sorted(c.name for c in chosen)


def test_the_rule_evicts_the_set_that_is_cheapest_to_reload() -> None:
    rule = CheapestReload()
    big, small, other = candidate("big", 20, 20.0), candidate("small", 10, 4.0), candidate("other", 10, 5.0)
    assert names(rule.choose([big, small, other], int(15 * GB))) == ["other", "small"]  # 9 s < 20 s
    assert names(rule.choose([big, small, other], int(5 * GB))) == ["small"]
    assert names(rule.choose([big, small, other], 0)) == []
    assert rule.choose([small, other], int(25 * GB)) is None  # cannot free enough


def test_idleness_discounts_the_reload_cost() -> None:
    rule = CheapestReload()
    fresh, stale = candidate("fresh", 10, 5.0, idle_s=0.0), candidate("stale", 10, 20.0, idle_s=60.0)
    assert names(rule.choose([fresh, stale], int(10 * GB))) == ["stale"]  # 20/61 s < 5 s


def test_a_model_another_crew_keeps_goes_only_when_nothing_else_frees_the_room() -> None:
    rule = CheapestReload()
    theirs, mine = candidate("theirs", 10, 1.0, elsewhere=True), candidate("mine", 10, 30.0)
    assert names(rule.choose([theirs, mine], int(10 * GB))) == ["mine"]
    assert names(rule.choose([theirs, mine], int(20 * GB))) == ["mine", "theirs"]


def test_the_greedy_search_beyond_the_exhaustive_limit_still_frees_enough() -> None:
    many = [candidate(f"m{i}", 1, float(i)) for i in range(14)]
    chosen = CheapestReload().choose(many, int(3 * GB))
    assert names(chosen) == ["m0", "m1", "m2"]


def test_with_a_forecast_the_model_needed_farthest_ahead_goes_whatever_its_cost() -> None:
    rule = WorkflowAware()
    # After the Architect, the workflow alternates Coder and Reviewer: the Architect is not needed.
    architect = candidate("architect", 54, 80.0, next_use=math.inf)
    coder = candidate("coder", 22, 30.0, next_use=1)
    assert names(rule.choose([architect, coder], int(15 * GB))) == ["architect"]
    # Without a forecast the same pair loses the coder: the cheaper reload.
    blind = [candidate("architect", 54, 80.0), candidate("coder", 22, 30.0)]
    assert names(rule.choose(blind, int(15 * GB))) == ["coder"]
    assert names(CheapestReload().choose(blind, int(15 * GB))) == ["coder"]


def test_with_a_forecast_expected_reload_seconds_decide_and_next_use_breaks_ties() -> None:
    rule = WorkflowAware()
    # All three will be needed within the horizon: the quickest to reload goes, however soon.
    soon = candidate("soon", 10, 1.0, next_use=1)
    later_dear, later_cheap = candidate("dear", 10, 50.0, next_use=3), candidate("cheap", 10, 5.0, next_use=3)
    assert names(rule.choose([soon, later_dear, later_cheap], int(10 * GB))) == ["soon"]
    assert sorted(names(rule.choose([soon, later_dear, later_cheap], int(20 * GB)))) == ["cheap", "soon"]
    assert rule.choose([soon], int(25 * GB)) is None
    # Equal expected costs: the model needed farthest ahead goes.
    near, far = candidate("near", 10, 5.0, next_use=1), candidate("far", 10, 5.0, next_use=4)
    assert names(rule.choose([near, far], int(10 * GB))) == ["far"]


def test_a_large_model_likely_back_stays_while_a_small_one_swaps() -> None:
    rule = WorkflowAware()
    # The chat where the person re-plans after most approvals: the Architect (78 s to reload)
    # is back within the horizon with p = 0.6, the Coder (32 s) surely.
    architect = Candidate("architect", int(54 * GB), 78.0, 0.0, next_use=3.0, p_use=0.6)
    coder = Candidate("coder", int(22 * GB), 32.0, 0.0, next_use=1.0, p_use=1.0)
    assert names(rule.choose([architect, coder], int(15 * GB))) == ["coder"]
    # Rarely back (p = 0.2: 16 s expected): the Architect goes.
    rare = Candidate("architect", int(54 * GB), 78.0, 0.0, next_use=5.0, p_use=0.2)
    assert names(rule.choose([rare, coder], int(15 * GB))) == ["architect"]


def test_with_a_forecast_what_another_crew_keeps_still_goes_last() -> None:
    rule = WorkflowAware()
    theirs = candidate("theirs", 10, 1.0, elsewhere=True, next_use=math.inf)
    mine = candidate("mine", 10, 30.0, next_use=2)
    assert names(rule.choose([theirs, mine], int(10 * GB))) == ["mine"]


def test_the_manager_turns_forecasts_into_next_uses() -> None:
    facts = {name: ModelFacts(name, int(gb * GB)) for name, gb in (("a", 30), ("c", 20), ("r", 15))}
    backend = SimulatedBackend(facts)
    manager = ResidencyManager(backend, MemoryBudget(int(55 * GB), "test"))
    for name in facts:
        manager.register(name, {"num_ctx": 2048})

    async def scenario() -> None:
        for name, forecast in (("a", ["a", "c", "r"]), ("c", ["c", "r", "c"]), ("r", ["r", "c", "r"])):
            manager.forecast(forecast, source="team")
            async with manager.hold(name):
                pass
        manager.forecast(None, source="team")
        await manager.aclose()

    run(scenario())
    assert backend.loads == ["a", "c", "r"] and sorted(backend.resident_bytes()) == ["c", "r"]


def test_the_manager_asks_an_injected_policy_and_evicts_what_it_chooses() -> None:
    class EvictLargest:
        def __init__(self) -> None:
            self.offered: list[list[str]] = []

        def choose(self, candidates: list[Candidate], shortfall: int) -> list[Candidate] | None:
            self.offered.append(sorted(c.name for c in candidates))
            return [max(candidates, key=lambda c: c.bytes)]

    facts = {name: ModelFacts(name, int(gb * GB)) for name, gb in (("a", 10), ("b", 20), ("c", 15))}
    backend = SimulatedBackend(facts)
    policy = EvictLargest()
    manager = ResidencyManager(backend, MemoryBudget(int(40 * GB), "test"), eviction=policy)
    for name in facts:
        manager.register(name, {"num_ctx": 2048})

    async def scenario() -> None:
        for name in ("a", "b", "c"):
            async with manager.hold(name):
                pass
        await manager.aclose()

    run(scenario())
    assert policy.offered == [["a", "b"]]
    assert backend.loads == ["a", "b", "c"] and sorted(backend.resident_bytes()) == ["a", "c"]


# -- holds owned by owners that are not tasks --------------------------------------------------


def test_holds_belong_to_their_owners_not_to_the_task_that_asks(ollama: FakeOllama) -> None:
    async def scenario() -> tuple[str, bool]:
        async with make_manager(ollama) as manager:  # 60 GB: the architect needs the coder gone
            recorder = Recorder(manager)
            alice = await manager.acquire(CODER, owner="client-alice")
            # Bob's request comes from the same task, but Alice's hold is not Bob's: he waits.
            bob = asyncio.ensure_future(manager.acquire(ARCHITECT, owner="client-bob"))
            await recorder.wait_for("residency_waiting")
            waited = not bob.done()
            manager.release(alice)
            manager.release(alice)  # twice: the second must not unpin anything else
            held = await asyncio.wait_for(bob, 30)
            manager.release(held)
            # The same owner asking for room only its own hold could free is told so, at once.
            carol = await manager.acquire(CODER, owner="client-carol")
            try:
                await asyncio.wait_for(manager.acquire(ARCHITECT, owner="client-carol"), 30)
            except ResidencyDeadlock as exc:
                message = str(exc)
            finally:
                manager.release(carol)
            return message, waited

    message, waited = run(scenario())
    assert waited
    assert "the same owner (client-carol)" in message
    assert ollama.load_names() == [CODER, ARCHITECT, CODER]
    assert [u["model"] for u in ollama.unloads] == [CODER, ARCHITECT]


# -- a backend added through the registry ------------------------------------------------------


class RecordingBackend:
    """Models kept in a dict; every call recorded."""

    instances: list[RecordingBackend] = []

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.resident: dict[str, int] = {}
        RecordingBackend.instances.append(self)

    @property
    def label(self) -> str:
        return "recording"

    async def running(self) -> list[Resident]:
        return [Resident(name, size, size, 2048) for name, size in self.resident.items()]

    async def inspect(self, model: str) -> ModelFacts:
        self.calls.append(("inspect", model))
        return ModelFacts(model, int(1 * GB), capabilities=frozenset({"tools"}))

    async def load(self, model: str, options: Mapping[str, Any]) -> None:
        self.calls.append(("load", model, dict(options)))
        self.resident[model] = int(1 * GB)

    async def unload(self, model: str) -> None:
        self.calls.append(("unload", model))
        self.resident.pop(model, None)

    async def renew(self, model: str, options: Mapping[str, Any]) -> None:
        self.calls.append(("renew", model))

    async def release(self, model: str, options: Mapping[str, Any]) -> None:
        self.calls.append(("release", model))

    async def aclose(self) -> None:
        self.calls.append(("aclose",))


ANSWERS = {"architect": "Plan: write it.\nNEXT: Coder", "coder": "Written.\nNEXT: Reviewer",
           "reviewer": "Looks right.\nAPPROVED"}


class ScriptedClient(ModelClient):
    """Answers by role, and notes whether its model was resident while it answered."""

    async def _complete(self, ask: Ask) -> Piece:
        backend = self._backend
        assert isinstance(backend, RecordingBackend)
        backend.calls.append(("answer", self._model, self._model in backend.resident))
        return Piece(content=ANSWERS[self._role], prompt_tokens=10, completion_tokens=5)


async def _open_recording(settings: Settings, probe: bool) -> RecordingBackend:
    return RecordingBackend()


def _small_context(roles: Mapping[Role, RoleSettings]) -> dict[Role, RoleSettings]:
    return {role: rs.model_copy(update={"num_ctx": 2048}) for role, rs in roles.items()}


@pytest.fixture
def recording_backend() -> Iterator[None]:
    RecordingBackend.instances.clear()
    register(BackendKind("recording", _open_recording, adapt=_small_context))
    register_client("recording", ScriptedClient)
    yield
    unregister("recording")
    unregister_client("recording")


def test_a_backend_added_to_the_registry_runs_the_team_unchanged(
    recording_backend: None, clean_env: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "2.5")  # two of the three 1 GB models at once
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    assert main(["run", "spec.md", "--backend", "recording", "--json"]) == 0
    (backend,) = RecordingBackend.instances
    loads = [c for c in backend.calls if c[0] == "load"]
    assert [c[1] for c in loads] == [ARCHITECT, CODER, REVIEWER]
    assert all(c[2]["num_ctx"] == 2048 for c in loads)  # the kind's adapted role settings
    assert [c[1] for c in backend.calls if c[0] == "unload"] == [ARCHITECT]  # room for the reviewer
    answers = [c for c in backend.calls if c[0] == "answer"]
    assert [c[1] for c in answers] == [ARCHITECT, CODER, REVIEWER] and all(c[2] for c in answers)
    assert backend.calls[-1] == ("aclose",)
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    started = next(e for e in events if e["type"] == "run_started")
    assert started["models"] == {"Architect": ARCHITECT, "Coder": CODER, "Reviewer": REVIEWER}
    (workspace,) = (clean_env / "workspaces").iterdir()
    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["approved"] is True and summary["totals"]["loads"] == 3


def test_an_unknown_backend_is_one_line_naming_the_registered_ones(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CREW_BACKEND", "vllm")
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    assert main(["run", "spec.md"]) == 2
    err = capsys.readouterr().err
    assert "backend (CREW_BACKEND)" in err and "auto, ollama, embedded" in err and err.count("\n") == 1


# -- one lifecycle on every exit path ----------------------------------------------------------


def test_a_failed_save_still_closes_everything_and_writes_the_summary(
    ollama: FakeOllama, clean_env: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from autogen_agentchat.teams import SelectorGroupChat

    from crew.commands.run import run_spec
    from crew.settings import load_settings

    async def broken_save(self: SelectorGroupChat) -> Any:
        raise RuntimeError("disk full")

    monkeypatch.setattr(SelectorGroupChat, "save_state", broken_save)
    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, "Plan.\nNEXT: Coder")
    ollama.script(CODER, "Done.\nNEXT: Reviewer")
    ollama.script(REVIEWER, "APPROVED")
    (clean_env / "spec.md").write_text("Write hello.py.\n")
    settings = load_settings(ollama_host=ollama.url, memory_budget_gb=60)
    outcome = run(run_spec(settings, clean_env / "spec.md", render=lambda event: None))
    root = outcome.workspace.root
    assert outcome.approved
    assert "disk full" in (root / "state.error.txt").read_text()
    assert (root / "crew.patch").is_file() and json.loads((root / "summary.json").read_text())["approved"]
    # The models were handed back to Ollama's expiry (an empty chat with keep_alive "5m").
    released = [r["body"]["model"] for r in ollama.requests
                if r["path"] == "/api/chat" and r["body"].get("keep_alive") == "5m"]
    assert sorted(released) == sorted([CODER, REVIEWER])
    assert json.loads((root / "events.jsonl").read_text().splitlines()[-1])["type"] == "run_finished"


def test_the_manager_needs_no_autogen() -> None:
    import subprocess
    import sys

    code = ("import sys, asyncio\n"
            "from crew.residency import ResidencyManager, open_manager\n"
            "from crew.backends import choose_backend\n"
            "print(sorted(m for m in sys.modules if m.startswith('autogen')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parent.parent, timeout=60).stdout
    assert out.strip() == "[]"

