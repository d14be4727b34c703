"""Settings: environment over crew.toml over defaults; bad values are one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from crew.errors import SettingsError
from crew.residency.budget import GB, resolve_budget
from crew.settings import DEFAULT_OLLAMA_HOST, load_settings


def test_defaults_are_the_documented_catalog() -> None:
    settings = load_settings()
    assert settings.ollama_host == DEFAULT_OLLAMA_HOST
    assert settings.architect.model == "qwen3-coder-next:q4_K_M"
    assert settings.coder.model == "qwen3-coder:30b"
    assert settings.reviewer.model == "qwen3:14b"
    assert all(rs.num_ctx == 32768 for rs in settings.roles().values())


def test_environment_overrides_crew_toml_which_overrides_defaults(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (clean_env / "crew.toml").write_text(
        'memory_budget_gb = 40\n[reviewer]\nnum_ctx = 8192\nmodel = "qwen3:8b"\n[coder]\nthink = false\n'
    )
    monkeypatch.setenv("CREW_REVIEWER_MODEL", "qwen3:32b")
    monkeypatch.setenv("CREW_OLLAMA_HOST", "gpu-box:11434")
    settings = load_settings()
    assert settings.reviewer.model == "qwen3:32b"  # env wins
    assert settings.reviewer.num_ctx == 8192  # toml kept for the other field
    assert settings.coder.model == "qwen3-coder:30b" and settings.coder.think is False
    assert settings.memory_budget_gb == 40
    assert settings.ollama_host == "http://gpu-box:11434"
    assert resolve_budget(settings.memory_budget_gb).bytes == 40 * GB


def test_ollama_host_is_read_as_ollama_reads_it(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLLAMA_HOST", "0.0.0.0")  # what the ollama CLI uses when CREW_ is unset
    assert load_settings().ollama_host == "http://0.0.0.0:11434"  # a bare host means 11434, not 80
    assert load_settings(ollama_host="[::1]").ollama_host == "http://[::1]:11434"
    assert load_settings(ollama_host="box:8080/").ollama_host == "http://box:8080"
    assert load_settings(ollama_host="https://box.example").ollama_host == "https://box.example"
    (clean_env / "crew.toml").write_text('ollama_host = "toml-box"\n')
    assert load_settings().ollama_host == "http://toml-box:11434"  # crew.toml over OLLAMA_HOST
    monkeypatch.setenv("CREW_OLLAMA_HOST", "http://crew-box:1")
    assert load_settings().ollama_host == "http://crew-box:1"


def test_options_are_the_same_for_preload_and_requests() -> None:
    settings = load_settings(coder={"model": "qwen3-coder:30b", "num_ctx": 16384, "seed": 7})
    assert settings.coder.options() == {"num_ctx": 16384, "temperature": 0.2, "seed": 7}


@pytest.mark.parametrize(
    ("env", "value", "expected"),
    [
        ("CREW_CODER_NUM_CTX", "lots", r"^invalid setting coder\.num_ctx \(CREW_CODER_NUM_CTX\): .*'lots'"),
        ("CREW_MEMORY_BUDGET_GB", "-3", r"^invalid setting memory_budget_gb \(CREW_MEMORY_BUDGET_GB\)"),
        ("CREW_REVIEWER_TEMPERATURE", "9", r"reviewer\.temperature.*less than or equal to 2"),
        ("CREW_ARCHITECT_MODEL", " ", r"architect\.model.*must name a model"),
        ("CREW_KEEP_ALIVE_AFTER", "300x", r"keep_alive_after.*duration with a unit"),
        ("CREW_OLLAMA_HOST", "ftp://x", r"ollama_host.*http\(s\) URL"),
    ],
)
def test_an_invalid_value_is_one_line_naming_the_setting(
    monkeypatch: pytest.MonkeyPatch, env: str, value: str, expected: str
) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(SettingsError, match=expected) as info:
        load_settings()
    assert "\n" not in str(info.value)


def test_a_typo_in_crew_toml_is_named(clean_env: Path) -> None:
    (clean_env / "crew.toml").write_text("[coder]\nnum_cxt = 4096\n")
    with pytest.raises(SettingsError, match=r"unknown setting coder\.num_cxt"):
        load_settings()


def test_broken_toml_is_one_line(clean_env: Path) -> None:
    (clean_env / "crew.toml").write_text("[coder\n")
    with pytest.raises(SettingsError, match=r"^crew\.toml is not valid TOML"):
        load_settings()


def test_two_roles_on_one_model_must_agree_on_num_ctx(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CREW_REVIEWER_MODEL", "qwen3-coder:30b")
    monkeypatch.setenv("CREW_REVIEWER_NUM_CTX", "8192")
    with pytest.raises(SettingsError, match="reload it at every switch"):
        load_settings()
