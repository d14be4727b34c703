"""The learned forecast: transitions seen (per workspace, across runs) blended with the rule, and
eviction that weighs the chance of each model's return against its reload seconds. Driven
through the team's real Selector and a real manager on the fake Ollama; loads are the fake's."""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path

import pytest
from autogen_agentchat.messages import BaseChatMessage, TextMessage

from crew.residency.transitions import LearnedForecast, Prior, Transitions, TransitionStore, store_key
from crew.routing import CHAT_RULE, RULE
from crew.team import Selector
from crew.terminal.cli import main
from tests.fake_ollama import GB, FakeOllama
from tests.helpers import ARCHITECT, CODER, REVIEWER, make_manager, run

MODELS = {"architect": ARCHITECT, "coder": CODER, "reviewer": REVIEWER}
SAYS = {"Architect": "Plan: do it.", "Coder": "Done.", "Reviewer": "APPROVED", "You": "Now add a flag."}


REPLAN = "The design misses the config file: it needs a new plan.\nNEXT: Architect"


def drive(ollama: FakeOllama, learned: LearnedForecast, *, human: bool, turns: int,
          review: str | None = None) -> list[str]:
    """A team of `turns` model turns at 80 GB (any two of the three models fit, not all
    three), each speaker chosen by the Selector; the person, in a chat, asks for more after
    every approval; `review`, if given, is what the Reviewer always says. Returns who spoke."""
    spoken: list[str] = []

    async def scenario() -> None:
        async with make_manager(ollama, 80) as manager:
            selector = Selector(manager, dict(MODELS), lambda event: None, human=human, learned=learned)
            thread: list[BaseChatMessage] = [TextMessage(source="user", content="Write a tool.")]
            while sum(1 for name in spoken if name != "You") < turns:
                name = selector(thread)
                spoken.append(name)
                if name != "You":
                    role = name.lower()
                    async with manager.hold(MODELS[role]):  # type: ignore[index]
                        pass
                # In a plain run the Reviewer asks for changes once, then approves (the run ends).
                text = SAYS[name] if human or spoken.count("Reviewer") > 1 else "Fix the edge case."
                if review is not None and name == "Reviewer":
                    text = review
                thread.append(TextMessage(source=name, content=text))

    run(scenario())
    return spoken


def fresh(rule: Prior = RULE) -> LearnedForecast:
    return LearnedForecast(MODELS, Transitions(rule))  # type: ignore[arg-type]


def test_a_run_whose_reviews_send_it_back_to_the_architect_keeps_it_from_the_second_round(
    ollama: FakeOllama,
) -> None:
    spoken = drive(ollama, fresh(), human=False, turns=18, review=REPLAN)
    assert spoken == ["Architect", "Coder", "Reviewer"] * 6
    loads = ollama.load_names()
    # Round 1 knows only the rule (in a run the Architect does not come back) and evicts it;
    # once a review has sent the work back, the Architect stays and Coder and Reviewer swap.
    assert loads[:5] == [ARCHITECT, CODER, REVIEWER, ARCHITECT, REVIEWER], loads
    assert loads.count(ARCHITECT) == 2
    later = ollama.loads[5:]
    assert [load["model"] for load in later] == [CODER, REVIEWER] * 4
    assert sum(load["size"] for load in later) / GB < 38 * 4  # ~38 GB a round, not ~92
    assert ollama.self_evictions() == []


def test_a_chat_that_replans_after_every_approval_keeps_the_architect_throughout(
    ollama: FakeOllama,
) -> None:
    # In a chat the rule itself says an approval gives the person the floor and a new request
    # is planned first: the Architect is kept from the first round.
    spoken = drive(ollama, fresh(CHAT_RULE), human=True, turns=18)
    assert [s for s in spoken if s != "You"] == ["Architect", "Coder", "Reviewer"] * 6
    loads = ollama.load_names()
    assert loads == [ARCHITECT, CODER, REVIEWER] + [CODER, REVIEWER] * 5
    gb_loaded = sum(load["size"] for load in ollama.loads) / GB
    assert gb_loaded < 281  # the GB floor of this trace: 92 + 5 x 37.6
    assert ollama.self_evictions() == []


def test_what_a_workspace_showed_carries_over_to_its_next_chat(ollama: FakeOllama, tmp_path: Path) -> None:
    store = TransitionStore(tmp_path / "state")
    key = store_key(tmp_path, "chat")
    first = LearnedForecast(MODELS, store.load(key, RULE), lambda t: store.save(key, t))  # type: ignore[arg-type]
    drive(ollama, first, human=False, turns=6, review=REPLAN)
    saved = json.loads((tmp_path / "state" / "transitions.json").read_text())
    assert saved[key]["reviewer 1"] == {"architect": 1.0} and saved[key]["task"] == {"architect": 1.0}

    ollama.reset(capacity=80 * GB)
    second = LearnedForecast(MODELS, store.load(key, RULE), lambda t: store.save(key, t))  # type: ignore[arg-type]
    drive(ollama, second, human=False, turns=9, review=REPLAN)
    assert ollama.load_names().count(ARCHITECT) == 1  # kept from the first round on


def test_a_plain_run_still_evicts_the_architect_that_does_not_come_back(ollama: FakeOllama) -> None:
    spoken = drive(ollama, fresh(), human=False, turns=5)
    assert spoken == ["Architect", "Coder", "Reviewer", "Coder", "Reviewer"]
    assert ollama.load_names() == [ARCHITECT, CODER, REVIEWER]
    assert [u["model"] for u in ollama.unloads] == [ARCHITECT]  # evicted by crew, for the Reviewer
    assert ollama.self_evictions() == []


def test_a_broken_transitions_file_starts_over(tmp_path: Path) -> None:
    (tmp_path / "transitions.json").write_text('{"run x": {"reviewer": {"coder": "many"}}, "y": 3')
    learned = TransitionStore(tmp_path).load("run x", RULE)
    assert learned.next_states("reviewer") == {"coder": 1.0}
    (tmp_path / "transitions.json").write_text('{"run x": {"reviewer": {"coder": "many", "human": 3}}}')
    learned = TransitionStore(tmp_path).load("run x", RULE)
    assert learned.next_states("reviewer") == {"human": 3 / 3.5, "coder": 0.5 / 3.5}  # the rule: half a count


def test_the_fake_serves_a_loaded_model_at_once_while_another_loads(ollama: FakeOllama) -> None:
    ollama.capacity = 80 * GB
    body = {"model": REVIEWER, "messages": [], "options": {"num_ctx": 32768}}

    def post(model: str) -> dict[str, object]:
        request = urllib.request.Request(f"{ollama.url}/api/chat", method="POST",
                                         data=json.dumps({**body, "model": model}).encode())
        with urllib.request.urlopen(request, timeout=10) as answer:
            return dict(json.loads(answer.read()))

    post(REVIEWER)
    ollama.load_started.clear()  # set by the Reviewer's load
    gate = threading.Event()
    ollama.load_gate = gate  # the Architect's load holds until the test lets it finish
    loading = threading.Thread(target=post, args=(ARCHITECT,), daemon=True)
    loading.start()
    try:
        assert ollama.load_started.wait(10)
        assert post(REVIEWER)["done"] is True  # served while the Architect still loads
        assert ollama.fast_path >= 1 and ollama.load_names() == [REVIEWER]
    finally:
        gate.set()
        loading.join(10)
    assert ollama.load_names() == [REVIEWER, ARCHITECT]


def test_crew_plan_shows_what_each_workspace_has_shown(
    ollama: FakeOllama, clean_env: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "80")
    store = TransitionStore(clean_env / "state")
    learned = Transitions(RULE)
    for _ in range(3):
        learned.observe("reviewer 2", "architect")
    learned.observe("reviewer 2", "coder 2")
    store.save(store_key("/work/site", "run"), learned)
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert ("learned transitions, run /work/site:\n"
            "  after reviewer 2 (4 seen): architect 67%, coder 2 33%\n") in out
    assert main(["plan", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["learned"]["run /work/site"]["reviewer 2"] == {
        "seen": 4.0, "following": {"architect": 0.667, "coder 2": 0.333}}
