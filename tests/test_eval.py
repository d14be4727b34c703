"""`crew eval`: suites read, hidden tests graded, team and solo measured with scripted models."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from crew.terminal.cli import main
from tests.fake_ollama import GB, FakeOllama, FakeReply
from tests.helpers import ARCHITECT, CODER, REVIEWER

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "examples" / "eval"


@pytest.fixture
def on_the_fake(ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> None:
    """`crew eval` through the CLI runs on the fake, 60 GB: the Architect alone, or the others."""
    ollama.capacity = 60 * GB
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")


def eval_json(out: Path) -> dict:
    return json.loads((out / "eval.json").read_text())


@pytest.mark.slow
def test_the_built_in_suite_scores_100_with_references_and_0_untouched(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = clean_env / "ev"
    assert main(["eval", str(SUITE), "--configs", "reference,empty", "--out", str(out)]) == 0
    data = eval_json(out)
    assert data["configs"]["reference"]["exercises"] == 10
    assert data["configs"]["reference"]["pass@1"] == 1.0
    assert data["configs"]["empty"]["pass@1"] == 0.0 and data["configs"]["empty"]["pass@2"] == 0.0
    assert "| reference | 10 | 100% |" in (out / "eval.md").read_text()


def write_exercise(root: Path, name: str, module: str, body: str) -> None:
    folder = root / name
    (folder / "tests").mkdir(parents=True)
    (folder / "spec.md").write_text(f"Write double(x) in {module}.py.\n")
    (folder / f"{module}.py").write_text("def double(x):\n    raise NotImplementedError\n")
    (folder / "tests" / f"test_{module}.py").write_text(
        f"from {module} import double\n\n\ndef test_double():\n    assert double(4) == 8\n")
    (folder / "solution").mkdir()
    (folder / "solution" / f"{module}.py").write_text(body)


def writes(module: str, body: str) -> FakeReply:
    return FakeReply("", tool_calls=[{"name": "write_file",
                                      "arguments": {"path": f"{module}.py", "content": body}}])


RIGHT = "def double(x):\n    return 2 * x\n"
WRONG = "def double(x):\n    return x + 1\n"


@pytest.mark.slow
def test_team_and_solo_on_two_exercises_every_number(
    ollama: FakeOllama, on_the_fake: None, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    suite = clean_env / "suite"
    write_exercise(suite, "a_right", "alpha", RIGHT)
    write_exercise(suite, "b_wrong", "beta", RIGHT)
    # team, exercise a: plan, right code, approve. Exercise b: plan, wrong code, approve; the
    # hidden test fails; try 2 is told the failure and still writes the wrong code.
    ollama.script(ARCHITECT, "1. Write double.\nNEXT: Coder", "1. Write double.\nNEXT: Coder")
    ollama.script(CODER, writes("alpha", RIGHT), "Done.\nNEXT: Reviewer",
                  writes("beta", WRONG), "Done.\nNEXT: Reviewer",
                  writes("beta", WRONG), "Done again.\nNEXT: Reviewer",
                  # solo: a right on try 1; b wrong on try 1, right on try 2
                  writes("alpha", RIGHT), "Wrote it.\nDONE",
                  writes("beta", WRONG), "Wrote it.\nDONE",
                  writes("beta", RIGHT), "Fixed.\nDONE")
    ollama.script(REVIEWER, "APPROVED", "APPROVED", "APPROVED")
    out = clean_env / "ev"
    assert main(["eval", str(suite), "--configs", "team,solo", "--out", str(out), "--tries", "2"]) == 0
    data = eval_json(out)
    team, solo = data["configs"]["team"], data["configs"]["solo"]
    assert (team["exercises"], team["pass@1"], team["pass@2"], team["errors"]) == (2, 0.5, 0.5, 0)
    assert (solo["exercises"], solo["pass@1"], solo["pass@2"], solo["errors"]) == (2, 0.5, 1.0, 0)
    results = {(r["exercise"], r["config"]): r for r in data["results"]}
    assert results[("a_right", "team")]["passed_try"] == 1
    assert results[("b_wrong", "team")]["passed_try"] is None
    assert results[("a_right", "solo")]["passed_try"] == 1
    assert results[("b_wrong", "solo")]["passed_try"] == 2
    # The accounting of a real run: tokens as the fake counted them, loads as it made them.
    assert sum(r["prompt_tokens"] + r["completion_tokens"] for r in data["results"]) == sum(
        c["prompt_eval_count"] + c["eval_count"] for c in ollama.chats)
    assert sum(r["loads"] for r in data["results"]) == len(ollama.loads)
    assert team["mean_tokens"] == sum(
        results[(e, "team")]["prompt_tokens"] + results[(e, "team")]["completion_tokens"]
        for e in ("a_right", "b_wrong")) / 2
    # Try 2 was told what failed, in the same conversation.
    retold = [c for c in ollama.chats if any("hidden tests of this task failed" in str(m.get("content"))
                                             for m in c["messages"])]
    assert retold and "assert" in str(retold[0]["messages"])
    # Solo is one agent on the Coder's model.
    solo_models = {c["model"] for c in ollama.chats[-6:]}
    assert solo_models == {CODER}


def test_agents_never_see_the_hidden_tests(ollama: FakeOllama, on_the_fake: None, clean_env: Path) -> None:
    suite = clean_env / "suite"
    write_exercise(suite, "a", "alpha", RIGHT)
    ollama.script(CODER, FakeReply("", tool_calls=[{"name": "read_file",
                                                    "arguments": {"path": "tests/test_alpha.py"}}]),
                  FakeReply("", tool_calls=[{"name": "list_files", "arguments": {}}]), "Nothing.\nDONE")
    out = clean_env / "ev"
    assert main(["eval", str(suite), "--configs", "solo", "--tries", "1", "--out", str(out)]) == 0
    events = [json.loads(line) for line in
              (out / "solo" / "a" / "work" / "events.jsonl").read_text().splitlines()]
    results = [e for e in events if e["type"] == "tool_result"]
    assert results[0]["content"].startswith("error") and "test_alpha" not in results[1]["content"]
    assert "double(4) == 8" not in json.dumps(ollama.chats)


@pytest.mark.hostile
def test_the_agents_commands_see_neither_the_suite_nor_other_results(
    ollama: FakeOllama, on_the_fake: None, clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crew.workspace.sandbox import detect

    if detect("auto", False).kind == "none":
        pytest.skip("no sandbox here")
    shared = clean_env / "shared"  # shown to commands (sandbox_read): the suite and results in it are not
    suite, out = shared / "suite", shared / "ev"
    write_exercise(suite, "a", "alpha", RIGHT)
    (out / "reference" / "b" / "work").mkdir(parents=True)
    (out / "reference" / "b" / "work" / "beta.py").write_text("THE-REFERENCE-OF-B\n")
    monkeypatch.setenv("CREW_SANDBOX_READ", str(shared))
    (shared / "visible.txt").write_text("SHOWN-AS-ASKED\n")
    look = (f"cat {shared}/visible.txt; cat {suite}/a/tests/test_alpha.py {suite}/a/solution/alpha.py "
            f"{out}/reference/b/work/beta.py; find {shared} -type f -not -path '*/.git/*' | head; echo done")
    ollama.script(CODER, FakeReply("", tool_calls=[{"name": "run_command", "arguments": {"command": look}}]),
                  "Nothing.\nDONE")
    assert main(["eval", str(suite), "--configs", "solo", "--tries", "1", "--out", str(out)]) == 0
    events = [json.loads(line) for line in
              (out / "solo" / "a" / "work" / "events.jsonl").read_text().splitlines()]
    (shown,) = [e["content"] for e in events if e["type"] == "tool_result"]
    assert "done" in shown and "SHOWN-AS-ASKED" in shown
    for secret in ("double(4) == 8", "return 2 * x", "THE-REFERENCE-OF-B"):
        assert secret not in shown
    assert f"{suite}/a/tests/test_alpha.py\n" not in shown  # not even listed by find


def test_humaneval_and_polyglot_suites_are_read_and_graded(clean_env: Path) -> None:
    humaneval = clean_env / "HumanEval.jsonl.gz"
    item = {"task_id": "HumanEval/0", "entry_point": "inc",
            "prompt": 'def inc(x):\n    """x plus one"""\n',
            "canonical_solution": "    return x + 1\n",
            "test": "def check(candidate):\n    assert candidate(1) == 2\n"}
    with gzip.open(humaneval, "wt") as handle:
        handle.write(json.dumps(item) + "\n")
    poly = clean_env / "polyglot" / "python" / "exercises" / "practice" / "two-fer"
    (poly / ".docs").mkdir(parents=True)
    (poly / ".meta").mkdir()
    (poly / ".docs" / "instructions.md").write_text("Write two_fer(name='you').\n")
    (poly / "two_fer.py").write_text("def two_fer(name='you'):\n    pass\n")
    (poly / "two_fer_test.py").write_text(
        "from two_fer import two_fer\n\n\n"
        "def test_it():\n    assert two_fer('Bo') == 'One for Bo, one for me.'\n")
    (poly / ".meta" / "example.py").write_text(
        "def two_fer(name='you'):\n    return f'One for {name}, one for me.'\n")
    for suite in (humaneval, clean_env / "polyglot"):
        out = clean_env / f"ev-{suite.name}"
        assert main(["eval", str(suite), "--configs", "reference,empty", "--out", str(out)]) == 0
        data = eval_json(out)
        assert data["configs"]["reference"]["pass@1"] == 1.0 and data["configs"]["empty"]["pass@1"] == 0.0


def test_bad_suite_and_config_are_one_line(clean_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", str(clean_env / "nowhere")]) == 2
    assert main(["eval", str(SUITE), "--configs", "duo"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("crew:")]
    assert len(errors) == 2 and "no suite" in errors[0] and "unknown config 'duo'" in errors[1]


def test_an_interrupted_eval_resumes_where_it_stopped(clean_env: Path) -> None:
    suite = clean_env / "suite"
    write_exercise(suite, "a", "alpha", RIGHT)
    write_exercise(suite, "b", "beta", RIGHT)
    out = clean_env / "ev"
    assert main(["eval", str(suite), "--configs", "reference", "--only", "a", "--out", str(out)]) == 0
    with (out / "results.jsonl").open("a") as results:
        results.write('{"exercise": "b", "config": "refe')  # a line torn by a kill
    assert main(["eval", str(suite), "--configs", "reference", "--out", str(out)]) == 2  # not over it
    assert main(["eval", str(suite), "--configs", "reference", "--resume", str(out)]) == 0
    lines = (out / "results.jsonl").read_text().splitlines()
    graded = [json.loads(line)["exercise"] for line in lines if line.startswith("{") and line.endswith("}")]
    assert graded == ["a", "b"]  # a was not graded again
    assert eval_json(out)["configs"]["reference"]["exercises"] == 2


def test_the_proxy_answers_with_exact_builtins_and_its_handles_equal_no_plain_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wire between the hidden tests and the solution, end to end in one process (a thread
    serves): an int subclass equal to everything arrives as its int, an object equal to
    everything is a handle equal to no plain value, and a subclass claimed on the wire is refused."""
    import socket
    import threading

    from crew.evaluation import remote, solution_host, wire

    (tmp_path / "crew_proxy_probe.py").write_text(
        "class Yes(int):\n    def __eq__(self, other):\n        return True\n\n"
        "    __hash__ = int.__hash__\n\n\n"
        "class Always:\n    def __eq__(self, other):\n        return True\n\n\n"
        "def yes():\n    return Yes(3)\n\n\ndef always():\n    return Always()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, "crew_proxy_probe", raising=False)
    ours, theirs = socket.socketpair()
    server = threading.Thread(target=solution_host.serve, args=(theirs,))
    server.start()
    try:
        conn = remote.Connection(ours, 10.0)
        module = conn.request("import", "crew_proxy_probe")
        value = conn.request("call", conn.request("getattr", module, "yes"))
        assert type(value) is int and value == 3 and value != 5
        always = conn.request("call", conn.request("getattr", module, "always"))
        assert isinstance(always, remote.Remote) and always != 5 and not always == "x"
        assert always == always  # between its own objects, the solution's __eq__ decides
        with pytest.raises(ModuleNotFoundError):  # the solution's exception, the same builtin here
            conn.request("import", "crew_proxy_probe_absent")
    finally:
        ours.close()
        server.join(timeout=10)
        theirs.close()
    assert not server.is_alive()
    with pytest.raises(wire.WireError):
        wire.decode({"t": "int", "class": "Yes", "v": 3}, lambda data: conn.tagged(data))


def test_the_wire_carries_the_standard_value_types_exactly_and_refuses_malformed_ones() -> None:
    """Exercises pass and return dates, durations, complex numbers, Decimals and Fractions
    (polyglot's gigasecond, meetup, complex-numbers): a right solution must not fail because its
    value became a handle; what arrives is the exact type, rebuilt from its fields."""
    import datetime as dt
    from decimal import Decimal
    from fractions import Fraction
    from zoneinfo import ZoneInfo

    from crew.evaluation import wire

    def refuse(data: object) -> object:
        raise AssertionError(f"not a value type: {data}")

    values = [1 + 2j, Decimal("1.10"), Fraction(1, 3), dt.timedelta(days=-1, seconds=5),
              dt.date(2013, 5, 1), dt.datetime(2043, 1, 1, 1, 46, 40),
              dt.datetime(2020, 1, 1, tzinfo=dt.timezone(dt.timedelta(hours=2))),
              dt.datetime(2021, 10, 31, 2, 30, fold=1, tzinfo=ZoneInfo("Europe/Paris")),
              dt.time(8, 0, tzinfo=dt.UTC)]
    for value in values:
        back = wire.decode(wire.encode(value, refuse), refuse)
        assert type(back) is type(value) and back == value and str(back) == str(value)
        assert getattr(back, "fold", 0) == getattr(value, "fold", 0)
    for bad in ({"t": "fraction", "v": [1, 0]}, {"t": "complex", "v": ["1", 2]},
                {"t": "decimal", "v": "one"}, {"t": "date", "v": "2013-13-01"},
                {"t": "datetime", "v": "2020-01-01T00:00", "fold": 0, "zone": "../../etc/passwd"},
                {"t": "datetime", "v": "2020-01-01T00:00+01:00", "fold": 0, "zone": "UTC"},
                {"t": "timedelta", "v": [10**12, 0, 0]}, {"t": "time", "v": "08:00", "fold": 2}):
        with pytest.raises(wire.WireError):
            wire.decode(bad, refuse)
