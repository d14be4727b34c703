"""Settings: environment variables (`CREW_*`) over `crew.toml` over defaults.

One pydantic-settings class. Nested role settings read from `CREW_<ROLE>_<FIELD>`
(`CREW_CODER_MODEL`, `CREW_REVIEWER_NUM_CTX`) or from a `[coder]` table in crew.toml.
An invalid value becomes one `SettingsError` line that names the setting.
"""

from __future__ import annotations

import os
import re
import tempfile
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from crew.errors import SettingsError

Role = Literal["architect", "coder", "reviewer"]
ROLES: tuple[Role, ...] = ("architect", "coder", "reviewer")

DEFAULT_OLLAMA_HOST = "http://127.0.0.1:11434"
CONFIG_FILE = "crew.toml"

# Ollama's duration strings: a number with a unit; a bare number is only valid as JSON number.
_KEEP_ALIVE = re.compile(r"^-?\d+(\.\d+)?(ns|us|µs|ms|s|m|h)$")


class RoleSettings(BaseModel):
    """How one role talks to its model."""

    model_config = ConfigDict(extra="forbid")

    model: str
    num_ctx: int = Field(32768, ge=512, le=1_048_576)
    """Context window. Sent on every request and on the preload, so Ollama never reloads."""
    temperature: float = Field(0.2, ge=0.0, le=2.0)
    seed: int | None = None
    think: bool | None = None
    """True/False to force Qwen3 thinking on or off; None sends it only where supported."""
    timeout_s: float = Field(600.0, gt=0)
    """Longest a single model request may take, after its model is resident."""
    edit_format: Literal["tools", "blocks", "both"] = "both"
    """How a role that may write edits files: tool calls (write_file, edit_file), fenced blocks
    under a path and SEARCH/REPLACE blocks in its answer, or both."""

    @field_validator("model")
    @classmethod
    def _model_named(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must name a model, e.g. qwen3:14b")
        return value

    def options(self) -> dict[str, Any]:
        """Ollama `options` for every request of this role, the preload included."""
        options: dict[str, Any] = {"num_ctx": self.num_ctx, "temperature": self.temperature}
        if self.seed is not None:
            options["seed"] = self.seed
        return options


# One class per role so that setting one field (CREW_CODER_NUM_CTX) keeps the role's default model.
class ArchitectSettings(RoleSettings):
    model: str = "qwen3-coder-next:q4_K_M"


class CoderSettings(RoleSettings):
    model: str = "qwen3-coder:30b"


class ReviewerSettings(RoleSettings):
    model: str = "qwen3:14b"


def host_url(value: str) -> str:
    """An Ollama host as a URL, read as Ollama reads OLLAMA_HOST (`box` is http://box:11434)."""
    value = value.strip()
    if not value.rstrip("/"):
        raise ValueError("must be a URL such as http://127.0.0.1:11434")
    if "://" not in value:
        # Ollama's own reading of a bare host: `0.0.0.0` or `box` means port 11434, not 80.
        value = value.rstrip("/")
        authority = value.split("/", 1)[0]
        has_port = re.search(r":\d+$", authority) and not authority.endswith("]")
        value = "http://" + (value if has_port else authority + ":11434" + value[len(authority):])
    if not re.match(r"^https?://[^/\s]+", value):
        raise ValueError("must be an http(s) URL such as http://127.0.0.1:11434")
    return value.rstrip("/")


class HostSettings(BaseModel):
    """One Ollama host of several (`[[hosts]]` in crew.toml, or CREW_OLLAMA_HOSTS)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str
    memory_budget_gb: float | None = Field(None, gt=0, allow_inf_nan=False)
    """What crew may fill on that host, in GB; unset, the host's own Ollama cannot say it."""
    name: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        return host_url(value)

    @property
    def label(self) -> str:
        return self.name or urlsplit(self.url).netloc


def _default_state_dir() -> Path:
    xdg = os.environ.get("XDG_STATE_HOME")
    if xdg:
        return Path(xdg) / "crew"
    try:
        return Path.home() / ".local" / "state" / "crew"
    except RuntimeError:  # no HOME and no passwd entry (some containers): notes are a cache
        return Path(tempfile.gettempdir()) / f"crew-state-{getattr(os, 'getuid', lambda: 0)()}"


class Settings(BaseSettings):
    """Everything crew can be told. See README for each variable."""

    model_config = SettingsConfigDict(
        env_prefix="CREW_",
        env_nested_delimiter="_",
        env_nested_max_split=1,
        toml_file=CONFIG_FILE,
        extra="forbid",
    )

    ollama_host: str = Field(default_factory=lambda: os.environ.get("OLLAMA_HOST") or DEFAULT_OLLAMA_HOST)
    """Where Ollama listens. Unset, it is OLLAMA_HOST (as the ollama CLI reads it), else localhost."""
    hosts: Annotated[list[HostSettings], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("hosts", "crew_ollama_hosts"))
    """Several Ollama hosts (CREW_OLLAMA_HOSTS, comma-separated, each `URL` or `name=URL`; or
    `[[hosts]]` tables in crew.toml with url, memory_budget_gb, name): `crew ps` shows them all."""
    backend: str = "auto"
    """A registered backend (`ollama`, `embedded`), or auto: Ollama when it answers, else the
    embedded llama.cpp backend when installed."""
    memory_budget_gb: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Memory crew may fill with models, in GB (10^9 bytes). Default: from the machine."""
    allow_partial_offload: bool | Literal["auto"] = "auto"
    """Let a model larger than the budget run alone, split between GPU and CPU (slow). auto:
    when the machine's memory can hold it; true: always; false: never."""
    load_timeout_s: float = Field(300.0, gt=0)
    reconcile_ttl_s: float = Field(0.0, ge=0)
    """How long a read of /api/ps may be trusted for a request to a resident model. 0 reads it
    before every request (~2 ms each); loads and evictions always read it fresh."""
    lease_s: float = Field(300.0, gt=0)
    """How long a model crew keeps stays in Ollama without crew: every request and a renewal
    before it runs out extend it, so a killed crew frees the memory within one lease."""
    keep_alive_after: str | float = "5m"
    """What keep_alive crew leaves its models with when it exits (Ollama's syntax)."""
    workspaces_dir: Path = Path("workspaces")
    state_dir: Path = Field(default_factory=lambda: _default_state_dir())
    """Where running crew processes note the models they keep, for `crew ps`."""
    prompts_dir: Path | None = None
    """A folder with architect.md / coder.md / reviewer.md that replace crew's prompts."""
    max_turns: int = Field(20, ge=1)
    max_seconds: float = Field(3600.0, gt=0)
    """Wall-clock limit of a run, checked as each message arrives."""
    max_tokens: int | None = Field(None, ge=1)
    """Token budget of a run (prompt + completion, all agents)."""
    max_tool_iterations: int = Field(8, ge=1)
    command_timeout_s: float = Field(120.0, gt=0)
    sandbox: Literal["auto", "require", "off"] = "auto"
    """Agent commands in a sandbox (bubblewrap, namespaces, sandbox-exec): auto uses the best
    there is and says when there is none; require makes none an error."""
    sandbox_read: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """More paths agent commands may read (read-only), besides the system, crew's Python and the
    workspace: `sandbox_read = ["~/data"]` in crew.toml, or CREW_SANDBOX_READ comma-separated."""
    tool_network: bool = False
    """Agent commands may use the network (CREW_TOOL_NETWORK=on)."""
    review_architect_lines: int = Field(400, ge=1)
    """`crew review` asks the Architect too when a diff has more lines than this."""

    serve_host: str = "127.0.0.1"
    """Where `crew serve` listens. Any address but loopback needs CREW_SERVE_TOKEN."""
    serve_port: int = Field(8000, ge=0, le=65535)
    serve_token: str | None = None
    """Clients of `crew serve` send `Authorization: Bearer <token>`; required off loopback."""
    serve_max_body_mb: float = Field(16.0, gt=0)
    """Largest request body `crew serve` accepts (413 over it)."""
    serve_num_ctx: int = Field(32768, ge=512, le=1_048_576)
    """num_ctx `crew serve` gives models outside the roles (capped at the model's context)."""
    serve_client_num_ctx: bool = False
    """`crew serve` takes the num_ctx the first request for a model outside the roles asks for
    (capped at the model's context); later requests cannot change it. Off: serve_num_ctx."""
    serve_grace_s: float = Field(30.0, ge=0)
    """On SIGTERM, how long `crew serve` lets requests in flight finish."""
    serve_allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """`Host` names `crew serve` answers besides loopback and the address it binds (comma-separated).
    On loopback the Host check is always on (DNS rebinding); bound elsewhere (with a token) it is
    on only when this is set."""
    serve_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Browser origins `crew serve` answers besides Ollama's defaults (comma-separated, `*`
    matches any run of characters, `*` alone any origin), like OLLAMA_ORIGINS."""

    routing: dict[str, Role] = Field(default_factory=dict)
    """Task types routed elsewhere than the seed's table says, or added to it: a `[routing]`
    table in crew.toml (`summary = "coder"`), or CREW_ROUTING_<TYPE>=<role>. `crew models`
    prints the table in effect."""

    architect: ArchitectSettings = ArchitectSettings()
    coder: CoderSettings = CoderSettings()
    reviewer: ReviewerSettings = ReviewerSettings()

    @field_validator("ollama_host")
    @classmethod
    def _host_is_url(cls, value: str) -> str:
        return host_url(value)

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts_from_text(cls, value: Any) -> Any:
        # CREW_OLLAMA_HOSTS="http://gpu1:11434,gpu2" or "a=http://gpu1:11434,b=gpu2"
        if not isinstance(value, str):
            return value
        entries = [entry.strip() for entry in value.split(",") if entry.strip()]
        return [{"url": url, "name": name or None}
                for name, _, url in (e.rpartition("=") if "=" in e else ("", "", e) for e in entries)]

    @field_validator("routing", mode="before")
    @classmethod
    def _routing_lowercase(cls, value: Any) -> Any:
        # Task types and roles compare case-insensitively, as the seed's `task_type.lower()`.
        if not isinstance(value, dict):
            return value
        return {str(k).strip().lower(): v.strip().lower() if isinstance(v, str) else v
                for k, v in value.items()}

    @field_validator("serve_allowed_hosts", "serve_origins", "sandbox_read", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        # CREW_SANDBOX_READ="/data/corpus,~/datasets", CREW_SERVE_ORIGINS="https://a,https://b"
        if not isinstance(value, str):
            return value
        return [entry.strip() for entry in value.split(",") if entry.strip()]

    @field_validator("sandbox_read")
    @classmethod
    def _paths_absolute(cls, value: list[Path]) -> list[Path]:
        expanded = [path.expanduser() for path in value]
        relative = [str(path) for path in expanded if not path.is_absolute()]
        if relative:
            raise ValueError(f"must be absolute paths (or start with ~): {', '.join(relative)}")
        return expanded

    @field_validator("prompts_dir")
    @classmethod
    def _prompts_dir_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError("must be a folder with architect.md, coder.md, reviewer.md or review.md")
        return value

    @field_validator("backend")
    @classmethod
    def _backend_stripped(cls, value: str) -> str:
        # Which names exist is the registry's business (crew.backends): choose_backend refuses
        # an unknown one in one line, and the command line offers only registered ones.
        return value.strip()

    @field_validator("keep_alive_after")
    @classmethod
    def _keep_alive_syntax(cls, value: str | float) -> str | float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
            if not _KEEP_ALIVE.match(value.strip()):
                raise ValueError('must be seconds (300) or a duration with a unit ("5m", "1h")')
            return value.strip()
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))

    def role(self, role: Role) -> RoleSettings:
        settings: RoleSettings = getattr(self, role)
        return settings

    def roles(self) -> dict[Role, RoleSettings]:
        return {role: self.role(role) for role in ROLES}

    def deterministic(self) -> Settings:
        """These settings with temperature 0 and a fixed seed for every role (CI mode): same
        spec, same models, same answers. A new object; this one is unchanged."""
        update: dict[str, Any] = {role: rs.model_copy(update={"temperature": 0.0, "seed": rs.seed or 0})
                  for role, rs in self.roles().items()}
        return self.model_copy(update=update)


def _setting_name(loc: tuple[int | str, ...]) -> str:
    if loc and loc[0] in ("hosts", "crew_ollama_hosts"):
        return f"hosts[{loc[1]}].{loc[2]} (CREW_OLLAMA_HOSTS or [[hosts]] in {CONFIG_FILE})" if len(loc) > 2 \
            else f"hosts (CREW_OLLAMA_HOSTS or [[hosts]] in {CONFIG_FILE})"
    dotted = ".".join(str(part) for part in loc)
    env = "CREW_" + "_".join(str(part) for part in loc).upper()
    return f"{dotted} ({env})"


def load_settings(**overrides: Any) -> Settings:
    """Read settings; raise SettingsError with one line naming the bad setting."""
    try:
        settings = Settings(**overrides)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = _setting_name(first["loc"])
        if first["type"] == "extra_forbidden":
            raise SettingsError(
                f"unknown setting {where}: check its spelling in {CONFIG_FILE} or the environment"
            ) from None
        got = first.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float) else ""
        raise SettingsError(f"invalid setting {where}: {first['msg']}{shown}") from None
    except UnicodeDecodeError:
        raise SettingsError(f"{CONFIG_FILE} is not UTF-8 text: save it as UTF-8") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{CONFIG_FILE} is not valid TOML: {exc}") from None
    _check_shared_models(settings)
    return settings


def _check_shared_models(settings: Settings) -> None:
    # Two roles on one model must agree on runner options, or Ollama reloads it on every switch.
    seen: dict[str, tuple[Role, int]] = {}
    for role, rs in settings.roles().items():
        if rs.model in seen and seen[rs.model][1] != rs.num_ctx:
            other = seen[rs.model][0]
            raise SettingsError(
                f"roles {other} and {role} both use {rs.model} with different num_ctx "
                f"({seen[rs.model][1]} and {rs.num_ctx}); Ollama would reload it at every switch: "
                "give them the same num_ctx"
            )
        seen.setdefault(rs.model, (role, rs.num_ctx))
