"""`crew doctor`, `ps`, `models`, `plan`, `runs` against the fake server in its typical states."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from crew.residency.budget import GB
from crew.routing import TASK_TYPES
from crew.terminal.cli import main
from tests.conftest import MACHINE_MEMORY
from tests.fake_ollama import FakeOllama
from tests.helpers import ARCHITECT, CODER, REVIEWER, run

ROOT = Path(__file__).resolve().parent.parent


def crew_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, Any]:
    code = main([*args, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


@pytest.fixture
def env(ollama: FakeOllama, monkeypatch: pytest.MonkeyPatch) -> FakeOllama:
    monkeypatch.setenv("CREW_OLLAMA_HOST", ollama.url)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "60")
    return ollama


def test_doctor_with_nothing_pulled_says_what_to_pull_and_exits_1(
    env: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    env.reset(models=[])
    code, data = crew_json(capsys, "doctor")
    assert code == 1 and data["can_run"] is False and data["reachable"] is True
    assert data["version"] == env.version
    assert [r["pulled"] for r in data["roles"]] == [False, False, False]
    assert any("`ollama pull qwen3:14b`" in p for p in data["problems"])


def test_doctor_with_all_pulled_reports_thinking_sizes_and_who_fits_together(
    env: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    code, data = crew_json(capsys, "doctor")
    assert code == 0 and data["can_run"] is True and data["problems"] == []
    roles = {r["role"]: r for r in data["roles"]}
    assert roles["reviewer"]["thinking"] is True and roles["coder"]["thinking"] is False
    assert all(r["fits_alone"] for r in roles.values())
    assert data["co_resident"] == [["coder", "reviewer"]]
    assert data["budget"] == {"bytes": 60 * GB, "source": "CREW_MEMORY_BUDGET_GB",
                              "machine": MACHINE_MEMORY, "apple_gpu": False}


def test_doctor_refuses_a_model_over_the_budget_unless_partial_offload_is_allowed(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "48")
    # auto (the default): the 55 GB architect is over this 32 GB machine's memory too.
    code, data = crew_json(capsys, "doctor")
    (problem,) = data["problems"]
    assert code == 1 and "more than this machine's 32.0 GB" in problem and "smaller model" in problem
    assert "NUM_CTX" not in problem  # its weights alone are over the budget: no num_ctx would do
    monkeypatch.setenv("CREW_ALLOW_PARTIAL_OFFLOAD", "false")
    code, data = crew_json(capsys, "doctor")
    assert code == 1 and "CREW_ALLOW_PARTIAL_OFFLOAD=auto" in data["problems"][0]
    monkeypatch.setenv("CREW_ALLOW_PARTIAL_OFFLOAD", "true")
    code, data = crew_json(capsys, "doctor")
    assert code == 0 and data["roles"][0]["fits_alone"] is False and data["roles"][0]["runs_alone"]
    assert data["warnings"][0].startswith("architect: qwen3-coder-next:q4_K_M (~55.4 GB) is larger")


def test_doctor_with_ollama_down_exits_2(
    dead_host: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOST", dead_host)
    code, data = crew_json(capsys, "doctor")
    assert code == 2 and data["reachable"] is False and "ollama serve" in data["problems"][0]
    # It says what `crew run` would fall back to: the bundled GGUF, if the extra is installed.
    if importlib.util.find_spec("llama_cpp") is None:
        assert data["embedded_model"] is None and data["warnings"] == []
    else:
        assert Path(data["embedded_model"]).stat().st_size > 50_000_000  # the real 98 MB file
        assert "falls back to the embedded backend" in data["warnings"][0]
    monkeypatch.setenv("CREW_BACKEND", "ollama")  # no fallback when Ollama is required
    code, data = crew_json(capsys, "doctor")
    assert code == 2 and data["warnings"] == []


def test_ps_models_and_plan_with_one_model_resident(
    env: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    env.preload(REVIEWER, num_ctx=32768)
    code, ps = crew_json(capsys, "ps")
    assert code == 0 and [m["name"] for m in ps["models"]] == [REVIEWER]
    assert ps["used"] == env.resident()[REVIEWER] and ps["models"][0]["gpu_share"] == 1.0
    assert ps["models"][0]["kept_by_crew"] is False  # loaded by hand, with a 5 minute expiry

    code, models = crew_json(capsys, "models")
    learned = {r["role"]: r["resident_bytes"] for r in models["roles"]}
    assert learned == {"architect": None, "coder": None, "reviewer": env.resident()[REVIEWER]}
    assert models["task_routing"]["reviewer"] == ["review", "test", "qa", "validate", "debug", "summary"]

    code, plan = crew_json(capsys, "plan")
    assert code == 0 and plan["loads"] == [ARCHITECT, CODER, REVIEWER]
    assert plan["co_resident"] == [["coder", "reviewer"]]
    coder_ctx = plan["max_num_ctx_together"]["coder"]
    assert 32768 <= coder_ctx < 262144 and coder_ctx % 1024 == 0


def test_plan_on_a_small_budget_expects_a_load_at_every_switch(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "30")
    monkeypatch.setenv("CREW_ALLOW_PARTIAL_OFFLOAD", "true")
    code, plan = crew_json(capsys, "plan")
    assert plan["co_resident"] == []
    assert plan["loads"] == [ARCHITECT, CODER, REVIEWER, CODER, REVIEWER, CODER, REVIEWER]


def test_plan_with_room_for_two_models_evicts_as_a_run_does(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", "80")  # any two of the three fit
    code, plan = crew_json(capsys, "plan")
    assert code == 0 and plan["loads"] == [ARCHITECT, CODER, REVIEWER]  # the Architect leaves first
    assert env.loads == []


def test_runs_lists_complete_and_broken_runs_newest_first(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = clean_env / "workspaces"
    good, broken, partial = ws / "20261101-good", ws / "20261102-broken", ws / "20261103-partial"
    for folder in (good, broken, partial):
        folder.mkdir(parents=True)
    (good / "summary.json").write_text(json.dumps({
        "spec": "spec.md", "started": 1000.0, "seconds": 12.5, "verdict": "approved",
        "stop_reason": "approved", "totals": {"loads": 3, "prompt_tokens": 100, "completion_tokens": 20}}))
    (broken / "summary.json").write_text('{"spec": "x.md", "started": ')
    os.utime(broken, (3000, 3000))
    os.utime(partial, (2000, 2000))
    code, runs = crew_json(capsys, "runs")
    assert code == 0
    assert [(r["id"], r["complete"]) for r in runs] == [
        ("20261102-broken", False), ("20261103-partial", False), ("20261101-good", True)]
    assert "broken or partial" in runs[0]["problem"] and "no summary.json" in runs[1]["problem"]
    assert runs[2]["loads"] == 3 and runs[2]["tokens"] == 120 and runs[2]["verdict"] == "approved"
    assert main(["runs", "show", "20261101-good"]) == 0
    assert json.loads(capsys.readouterr().out)["verdict"] == "approved"


def test_runs_show_an_unknown_id_is_one_line_and_exit_2(
    clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["runs", "show", "nope"]) == 2
    err = capsys.readouterr().err
    assert "no run 'nope'" in err and "`crew runs`" in err and err.count("\n") == 1


def test_the_routing_table_shown_is_the_one_the_team_uses(
    env: FakeOllama, capsys: pytest.CaptureFixture[str]
) -> None:
    shown = crew_json(capsys, "models")[1]["task_routing"]
    assert shown == {role: list(words) for role, words in TASK_TYPES.items()}


def test_operating_commands_do_not_import_autogen_and_ps_not_even_ollama(env: FakeOllama) -> None:
    # `import ollama` is ~0.25 s here and httpx ~0.06 s: `crew ps` and `--help` start without them,
    # and without the line editor. (httpx imports rich itself, for its own command line.)
    code = ("import sys; from crew.terminal.cli import main\n"
            "def loaded(*names): return [n for n in names if n in sys.modules]\n"
            "for c in (['ps'], ['--help'], ['doctor'], ['models'], ['plan'], ['runs']):\n"
            "    try: main(c)\n    except SystemExit: pass\n"
            "    print('after', c[0], loaded('ollama', 'httpx', 'autogen_agentchat', 'autogen_core', "
            "'prompt_toolkit'))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    lines = [line for line in result.stdout.splitlines() if line.startswith("after ")]
    assert lines[:2] == ["after ps []", "after --help []"], result.stdout + result.stderr
    # doctor and the rest use the official client, and still no AutoGen
    assert lines[-1] == "after runs ['ollama', 'httpx']", result.stdout + result.stderr


def test_ps_reads_ollamas_go_times_as_the_official_client_does(env: FakeOllama) -> None:
    import ollama

    from crew.backends.ollama_api import running_on

    env.preload(REVIEWER, num_ctx=32768)  # expires in 5 minutes
    env.preload(CODER, num_ctx=8192, keep_alive=-1)  # as crew pins it: Ollama says year 2318
    ours = running_on(env.url)
    client = ollama.Client(host=env.url)
    try:
        official = client.ps().models
    finally:
        client._client.close()
    assert [(r.name, r.size, r.size_vram, r.context_length, r.expires_at) for r in ours] == [
        (m.name, m.size, m.size_vram, m.context_length, m.expires_at) for m in official]
    assert all(r.expires_at is not None and r.expires_at.utcoffset() is not None for r in ours)


def test_ps_finds_ollama_through_ollama_host_without_a_scheme(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREW_OLLAMA_HOST")
    monkeypatch.setenv("OLLAMA_HOST", env.url.removeprefix("http://"))
    env.preload(REVIEWER)
    code, ps = crew_json(capsys, "ps")
    assert code == 0 and ps["host"] == env.url and [m["name"] for m in ps["models"]] == [REVIEWER]


def test_a_host_url_with_a_path_such_as_v1_gets_one_line_saying_to_use_the_root(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOST", env.url + "/v1")
    assert main(["ps"]) == 2
    err = capsys.readouterr().err
    assert "has no Ollama API" in err and "without /v1" in err and err.count("\n") == 1
    assert {"method": "GET", "path": "/v1/api/ps", "body": None} in env.requests


def test_ps_names_the_crew_process_that_keeps_a_model_and_since_when(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], clean_env: Path
) -> None:
    from crew.settings import load_settings
    from tests.helpers import manager_for

    env.preload(REVIEWER)  # loaded by someone else: Ollama's 5 minute expiry, no crew holder
    settings = load_settings(backend="ollama")

    async def scenario() -> tuple[Any, Any]:
        manager = (await manager_for(settings, "20261128-run"))[0]
        manager.register(CODER, settings.coder.options())
        try:
            async with manager.hold(CODER):
                during = crew_json(capsys, "ps")[1]
        finally:
            await manager.aclose()
        return during, crew_json(capsys, "ps")[1]

    during, after = run(scenario())
    held = {m["name"]: m for m in during["models"]}
    assert held[CODER]["held_by"] == {"pid": os.getpid(), "run": "20261128-run"}
    assert held[CODER]["kept_by_crew"] is True
    since = datetime.fromisoformat(held[CODER]["since"])  # ISO 8601, with its zone
    assert since.tzinfo is not None and abs(since.timestamp() - time.time()) < 600
    assert held[REVIEWER]["held_by"] is None and held[REVIEWER]["since"] is None
    # Closed: the model is handed back to Ollama's expiry and the process no longer claims it.
    released = {m["name"]: m for m in after["models"]}[CODER]
    assert released["held_by"] is None and released["kept_by_crew"] is False
    assert env.runners[CODER].keep_alive == 300
    assert list((clean_env / "state" / "holders").glob("*.json")) == []


def test_ps_ignores_and_removes_the_note_of_a_crew_that_died(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], clean_env: Path
) -> None:
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    folder = clean_env / "state" / "holders"
    folder.mkdir(parents=True)
    note = folder / f"{gone.pid}.json"
    note.write_text(json.dumps({"pid": gone.pid, "started": time.time() - 5, "host": env.url,
                                "run": "crashed", "models": {CODER: time.time() - 5}}))
    (folder / "half-written.json").write_text('{"pid": ')
    env.preload(CODER, keep_alive=-1)  # it pinned the model before it was killed
    code, ps = crew_json(capsys, "ps")
    assert code == 0 and ps["models"][0]["held_by"] is None and ps["models"][0]["kept_by_crew"]
    assert not note.exists() and (folder / "half-written.json").exists()
    assert main(["ps"]) == 0
    assert f"`ollama stop {CODER}` frees it" in capsys.readouterr().out


def test_models_doctor_and_plan_use_sizes_measured_in_earlier_runs(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from crew.residency.measurements import Measurement, Measurements

    coder, reviewer = env.models[CODER], env.models[REVIEWER]
    store = Measurements(clean_env / "state", env.url)
    store.remember(CODER, 32768, coder.file_size, Measurement(coder.resident_size(32768), 12.0))
    store.remember(REVIEWER, 32768, reviewer.file_size, Measurement(reviewer.resident_size(32768), 6.0))
    store.remember(ARCHITECT, 32768, 1, Measurement(1, 1.0))  # another file (re-pulled): ignored
    code, models = crew_json(capsys, "models")
    measured = {r["role"]: r["measured_bytes"] for r in models["roles"]}
    assert measured == {"architect": None, "coder": coder.resident_size(32768),
                        "reviewer": reviewer.resident_size(32768)}
    # Between the real sum and the estimated one: only the measurements say they fit together.
    real = coder.resident_size(32768) + reviewer.resident_size(32768)
    monkeypatch.setenv("CREW_MEMORY_BUDGET_GB", str((real + 0.5e9) / GB))
    code, doctor = crew_json(capsys, "doctor")
    assert doctor["co_resident"] == [["coder", "reviewer"]]
    monkeypatch.setenv("CREW_ALLOW_PARTIAL_OFFLOAD", "true")  # the architect, over this machine
    code, plan = crew_json(capsys, "plan")  # so a typical run loads each once, not at each switch
    assert plan["co_resident"] == [["coder", "reviewer"]] and plan["loads"] == [ARCHITECT, CODER, REVIEWER]
    assert json.loads((clean_env / "state" / "measured.json").read_text())[env.url][
        f"{CODER} num_ctx=32768"]["load_seconds"] == 12.0  # the simulation wrote nothing


def test_ps_shows_every_host_of_several_and_the_one_that_does_not_answer(
    env: FakeOllama, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, clean_env: Path,
) -> None:
    second = FakeOllama().start()
    try:
        env.preload(REVIEWER)
        second.preload(CODER)
        (clean_env / "crew.toml").write_text(
            f'[[hosts]]\nurl = "{env.url}"\nname = "gpu1"\nmemory_budget_gb = 48\n\n'
            f'[[hosts]]\nurl = "{second.url.removeprefix("http://")}"\n')
        code, ps = crew_json(capsys, "ps")
        assert code == 0
        assert [(h["name"], h["host"], [m["name"] for m in h["models"]]) for h in ps["hosts"]] == [
            ("gpu1", env.url, [REVIEWER]), (second.url.removeprefix("http://"), second.url, [CODER])]
        assert ps["hosts"][0]["budget"]["bytes"] == 48 * GB and ps["hosts"][1]["budget"] is None
        assert ps["hosts"][1]["used"] == second.resident()[CODER]
        assert {"method": "GET", "path": "/api/ps", "body": None} in second.requests
    finally:
        second.stop()

    # The environment names the hosts too; one that is down is shown as such, the rest still are.
    monkeypatch.setenv("CREW_OLLAMA_HOSTS", f"gpu1={env.url},gpu2={second.url}")
    assert main(["ps"]) == 2
    out, err = capsys.readouterr()
    assert f"── gpu1 ({env.url}) ──" in out and REVIEWER in out
    assert f"── gpu2 ({second.url}) ──\ndoes not answer:" in out
    assert err.count("\n") == 1 and second.url in err


@pytest.mark.parametrize("hosts", ["gpu1=ftp://box", ",", "gpu1=http://"])
def test_a_bad_host_list_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], hosts: str,
) -> None:
    monkeypatch.setenv("CREW_OLLAMA_HOSTS", hosts)
    code = main(["ps"])
    err = capsys.readouterr().err
    if hosts == ",":  # nothing listed: one host, as without the setting (Ollama is not running here)
        assert code == 2 and "CREW_OLLAMA_HOSTS" not in err
        return
    assert code == 2 and "CREW_OLLAMA_HOSTS or [[hosts]] in crew.toml" in err and err.count("\n") == 1
