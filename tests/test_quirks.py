"""Qwen3 through Ollama as it really behaves: tool calls lost into text, fenced edits, errors
mid-stream. Each run's Coder can write only in the broken form under test."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from crew.commands.run import Outcome, run_spec
from crew.errors import AnswerFailed, StreamInterrupted
from crew.residency.budget import GB
from crew.settings import load_settings
from tests.fake_ollama import FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER, run

HELLO = "def greet(name):\n    return f'Hello, {name}!'\n"
BIG = "".join(f"LINE_{i} = {i}\n" for i in range(4000))


def xml_call(name: str, opening: bool = True, **parameters: str) -> str:
    body = "".join(f"<parameter={key}>\n{value}\n</parameter>\n" for key, value in parameters.items())
    return ("<tool_call>\n" if opening else "") + f"<function={name}>\n{body}</function>\n</tool_call>"


def run_team(fake: FakeOllama, clean_env: Path, *coder: FakeReply | str,
             settings: dict[str, Any] | None = None,
             reviewer: tuple[str, ...] = ("Looks right.\nAPPROVED",)) -> tuple[Outcome, dict[str, Any]]:
    fake.reset(capacity=60 * GB)
    fake.script(ARCHITECT, "Plan: write hello.py with greet(name).\nNEXT: Coder")
    fake.script(CODER, *coder)
    fake.script(REVIEWER, *reviewer)
    spec = clean_env / "spec.md"
    spec.write_text("Write hello.py with a greet(name) function.\n")
    loaded = load_settings(ollama_host=fake.url, memory_budget_gb=60, **(settings or {}))
    outcome = run(run_spec(loaded, spec, render=lambda event: None))
    summary = json.loads((outcome.workspace.root / "summary.json").read_text())
    return outcome, summary


def events(outcome: Outcome, kind: str) -> list[dict[str, Any]]:
    lines = (outcome.workspace.root / "events.jsonl").read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["type"] == kind]


@pytest.mark.parametrize(("form", "answer", "content"), [
    ("xml", "Writing it.\n" + xml_call("write_file", path="hello.py", content=HELLO), HELLO),
    ("xml", xml_call("write_file", opening=False, path="hello.py", content=HELLO), HELLO),
    ("json", json.dumps({"name": "write_file", "arguments": {"path": "hello.py", "content": HELLO}}), HELLO),
    # 4,000 lines in one argument (streamed in 40 pieces, not a word at a time)
    ("xml", FakeReply(content=xml_call("write_file", path="hello.py", content=BIG), chunks=40), BIG),
])
def test_a_tool_call_that_arrived_as_text_runs(
    ollama: FakeOllama, clean_env: Path, form: str, answer: str | FakeReply, content: str
) -> None:
    outcome, summary = run_team(ollama, clean_env, answer, "Wrote hello.py.\nNEXT: Reviewer")
    assert outcome.approved
    assert (outcome.workspace.root / "hello.py").read_text() == content
    assert [(e["form"], e["name"]) for e in events(outcome, "tool_call_recovered")] == [(form, "write_file")]
    assert summary["agents"]["Coder"]["recovered_calls"] == 1 and summary["totals"]["recovered_calls"] == 1
    # The tool's answer went back to the model, as for a real call.
    told = ollama.chats[2]["messages"]
    assert told[-1]["role"] == "tool" and told[-1]["content"].startswith("wrote hello.py")


def test_a_cut_off_call_is_not_run_and_the_model_is_told_once(ollama: FakeOllama, clean_env: Path) -> None:
    cut = xml_call("write_file", path="hello.py", content=HELLO)[:70]
    outcome, summary = run_team(
        ollama, clean_env, cut, xml_call("write_file", path="hello.py", content=HELLO),
        "Wrote hello.py.\nNEXT: Reviewer")
    assert outcome.approved and (outcome.workspace.root / "hello.py").read_text() == HELLO
    (refused,) = events(outcome, "tool_call_refused")
    assert "cut off before </function>" in refused["problem"]
    # The second request carried the broken answer and one line saying what was wrong.
    second = ollama.chats[2]["messages"]
    assert second[-2] == {"role": "assistant", "content": cut}
    assert second[-1]["role"] == "user"
    assert second[-1]["content"].startswith("[crew]\ncrew: your call of write_file")
    assert summary["agents"]["Coder"]["refused_calls"] == 1
    assert summary["agents"]["Coder"]["recovered_calls"] == 1


def test_a_call_naming_no_tool_of_the_agent_is_refused_not_run(ollama: FakeOllama, clean_env: Path) -> None:
    outcome, _ = run_team(
        ollama, clean_env, xml_call("delete_everything", path="."), "Sorry.\nNEXT: Reviewer")
    (refused,) = events(outcome, "tool_call_refused")
    assert "there is no tool delete_everything" in refused["problem"]
    assert events(outcome, "tool_call_recovered") == [] and events(outcome, "tool_call") == []


def test_a_coder_writing_only_fenced_blocks_gets_its_files_written(
    ollama: FakeOllama, clean_env: Path
) -> None:
    edit = ("hello.py\n```python\n<<<<<<< SEARCH\ndef greet(name):\n=======\n"
            "def greet(name):\n    \"\"\"Greet someone.\"\"\"\n>>>>>>> REPLACE\n```\n")
    outcome, summary = run_team(
        ollama, clean_env,
        f"Here it is:\n\n```python hello.py\n{HELLO}```\n", "Written.\nNEXT: Reviewer",
        edit, "Added the docstring.\nNEXT: Reviewer",
        settings={"coder": {"edit_format": "blocks"}},
        reviewer=("Add a docstring to greet.\nNEXT: Coder", "APPROVED"),
    )
    assert outcome.approved
    text = (outcome.workspace.root / "hello.py").read_text()
    assert text == HELLO.replace("def greet(name):\n", 'def greet(name):\n    """Greet someone."""\n')
    forms = [e["form"] for e in events(outcome, "tool_call_recovered")]
    assert forms == ["fenced", "search_replace"] and summary["totals"]["recovered_calls"] == 2
    # With blocks only, the writing tools are not offered to the model.
    offered = {t["function"]["name"] for t in ollama.chats[1]["tools"]}
    assert offered == {"read_file", "list_files", "run_command"}


def test_a_fenced_block_that_would_not_parse_is_refused_by_the_same_check(
    ollama: FakeOllama, clean_env: Path
) -> None:
    outcome, _ = run_team(ollama, clean_env, "```python hello.py\ndef greet(:\n```\n",
                          "Oops.\nNEXT: Reviewer")
    assert not (outcome.workspace.root / "hello.py").exists()
    told = ollama.chats[2]["messages"][-1]
    assert told["role"] == "tool" and "not written" in told["content"] and "line 1" in told["content"]


def test_with_edit_format_tools_a_fenced_block_is_only_text(ollama: FakeOllama, clean_env: Path) -> None:
    outcome, _ = run_team(ollama, clean_env, f"```python hello.py\n{HELLO}```\nNEXT: Reviewer",
                          settings={"coder": {"edit_format": "tools"}})
    assert not (outcome.workspace.root / "hello.py").exists()
    assert events(outcome, "tool_call_recovered") == []


def test_an_error_line_before_any_token_is_retried_once(ollama: FakeOllama, clean_env: Path) -> None:
    outcome, summary = run_team(
        ollama, clean_env, FakeReply(content="Wrote nothing yet", error_after=0),
        xml_call("write_file", path="hello.py", content=HELLO), "Wrote hello.py.\nNEXT: Reviewer")
    assert outcome.approved and (outcome.workspace.root / "hello.py").read_text() == HELLO
    (retried,) = events(outcome, "model_call_retried")
    assert "mid-answer" in retried["error"] and summary["agents"]["Coder"]["retries"] == 1


def test_an_error_line_after_tokens_were_shown_is_a_typed_error_not_an_answer(
    ollama: FakeOllama, clean_env: Path
) -> None:
    with pytest.raises(AnswerFailed, match="mid-answer"):
        run_team(ollama, clean_env, FakeReply(content="I will write the file now", error_after=3))
    coder_calls = [c for c in ollama.chats if c["model"] == CODER]
    assert len(coder_calls) == 1  # shown text is never followed by a second answer
    (workspace,) = (clean_env / "workspaces").iterdir()
    summary = json.loads((workspace / "summary.json").read_text())
    assert summary["stop_reason"].startswith("error: ") and not summary["approved"]


def test_a_stream_that_ends_without_done_is_not_taken_as_complete(
    ollama: FakeOllama, clean_env: Path
) -> None:
    with pytest.raises(StreamInterrupted, match="ended before it was complete"):
        run_team(ollama, clean_env, FakeReply(content="Half an answer", no_done=True))


TOOLS = {
    "write_file": {"type": "object", "required": ["path", "content"],
                   "properties": {"path": {"type": "string"}, "content": {"type": "string"}}},
    "read_file": {"type": "object", "properties": {"path": {"type": "string"}}, "required": ["path"]},
}


def test_one_incomplete_call_among_complete_ones_runs_none() -> None:
    from crew.clients.recovery import recover

    text = xml_call("read_file", path="a.py") + "\n" + xml_call("write_file", path="b.py", content="x")[:60]
    found = recover(text, TOOLS, blocks=True)
    assert found.calls == [] and len(found.problems) == 1


def test_json_that_is_not_a_call_stays_an_answer_and_missing_arguments_are_named() -> None:
    from crew.clients.recovery import recover

    assert recover('{"verdict": "approve"}', TOOLS, blocks=True).calls == []
    assert recover('{"verdict": "approve"}', TOOLS, blocks=True).problems == []
    lacking = recover(json.dumps({"name": "write_file", "arguments": {"path": "a.py"}}), TOOLS, blocks=True)
    assert lacking.calls == [] and lacking.problems == ["your call of write_file lacks content: nothing ran"]


def test_a_fence_without_a_path_is_not_an_edit() -> None:
    from crew.clients.recovery import recover

    assert recover("```python\nprint(1)\n```", TOOLS, blocks=True).calls == []
    assert recover("```python3.11\nprint(1)\n```", TOOLS, blocks=True).calls == []
    (call,) = recover("```src/app.py\nprint(1)\n```", TOOLS, blocks=True).calls
    assert call.arguments == {"path": "src/app.py", "content": "print(1)\n"}


def test_the_embedded_backend_defaults_to_tool_call_edits_unless_told_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crew.backends.embedded import role_settings

    assert role_settings(load_settings().coder).edit_format == "tools"  # measured: bench/README.md
    assert load_settings().coder.edit_format == "both"  # on Ollama
    monkeypatch.setenv("CREW_CODER_EDIT_FORMAT", "blocks")
    assert role_settings(load_settings().coder).edit_format == "blocks"


def test_a_model_that_repeats_one_call_to_no_effect_has_its_turn_ended(
    ollama: FakeOllama, clean_env: Path
) -> None:
    from tests.test_run import run_in_process, write_spec

    ollama.capacity = 60 * GB
    ollama.script(ARCHITECT, "1. Look around, then write hello.py.\nNEXT: Coder")
    same = FakeReply("", tool_calls=[{"name": "list_files", "arguments": {}}])
    ollama.script(CODER, same, same, same, same, "never asked")
    ollama.script(REVIEWER, "APPROVED")
    outcome, events = run_in_process(ollama, write_spec(clean_env))
    coder_calls = [c for c in ollama.chats if c["model"] == CODER]
    assert len(coder_calls) == 3  # three identical results: no fourth request
    stopped = [e for e in events if e.type == "tool_loop_stopped"]
    assert [(e.role, e.name, e.times) for e in stopped] == [("coder", "list_files", 3)]
    # The note is the Coder's message: the Reviewer sees it.
    reviewer = [c for c in ollama.chats if c["model"] == REVIEWER][0]
    assert any("crew stopped this turn" in str(m.get("content")) for m in reviewer["messages"])
