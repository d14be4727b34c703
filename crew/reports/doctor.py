"""What crew can tell before a run: is Ollama there, are the models, do they fit, and how.

Backs `crew doctor`, `crew models` and `crew plan`. The residency plan is computed by the real
ResidencyManager driven through an in-memory backend, so it shows what crew will do rather
than a second copy of its policy.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

from crew.backends.base import ModelFacts, Resident
from crew.backends.embedded import BUNDLED_ALIAS, bundled_model_path, embedded_available
from crew.backends.ollama import OllamaBackend
from crew.backends.simulated import SimulatedBackend
from crew.errors import CrewError, ModelNotPulled, ModelTooLarge, OllamaUnreachable
from crew.residency import OffloadRule, ResidencyManager, advice
from crew.residency.budget import MemoryBudget
from crew.residency.measurements import Measurements
from crew.residency.transitions import LearnedForecast, Transitions, TransitionStore, rounds_prior
from crew.routing import CHAT_RULE, RULE
from crew.settings import ROLES, Role, Settings
from crew.workspace import cgroup
from crew.workspace.sandbox import for_settings

# The speaker order of a typical run: a plan, then three rounds of code and review.
TYPICAL_RUN: tuple[Role, ...] = ("architect", "coder", "reviewer", "coder", "reviewer", "coder", "reviewer")


@dataclass
class RoleCheck:
    role: str
    model: str
    num_ctx: int
    pulled: bool
    capabilities: list[str] = field(default_factory=list)
    thinking: bool = False
    estimated_bytes: int | None = None
    resident_bytes: int | None = None
    """What /api/ps reports now, if the model is resident at this num_ctx."""
    measured_bytes: int | None = None
    """What it took when crew last loaded it at this num_ctx (see `crew.residency.measurements`)."""
    fits_alone: bool | None = None
    runs_alone: bool = False
    """Over the budget but allowed to run alone, partly on the CPU (partial offload)."""
    fix: str | None = None
    """What stops the role from running, and how to fix it."""
    warning: str | None = None
    """What makes the role slower than it could be, and how to do better."""


@dataclass
class Checkup:
    host: str
    reachable: bool
    version: str | None
    budget: MemoryBudget
    roles: list[RoleCheck]
    co_resident: list[list[str]]
    """Sets of two or more roles whose models fit in the budget together."""
    warnings: list[str]
    problems: list[str]
    embedded_model: str | None = None
    """The bundled GGUF the embedded backend would run, if it is installed."""
    sandbox: str = ""
    """Where agent commands run, and what they can reach (see crew.workspace.sandbox)."""

    @property
    def can_run(self) -> bool:
        return self.reachable and not self.problems


async def run_checkup(settings: Settings, budget: MemoryBudget) -> Checkup:
    """Ask Ollama about every role; raises OllamaUnreachable when it does not answer."""
    backend = OllamaBackend(settings.ollama_host)
    try:
        version = await backend.version()
        running = {r.name: r for r in await backend.running()}
        measured = Measurements(settings.state_dir, settings.ollama_host, writable=False)
        checks = [await _check_role(backend, settings, role, budget, running, measured) for role in ROLES]
    finally:
        await backend.aclose()
    problems = [f"{c.role}: {c.fix}" for c in checks if c.fix]
    warnings = [f"{c.role}: {c.warning}" for c in checks if c.warning]
    sandbox = _sandbox(settings, warnings, problems)
    return Checkup(settings.ollama_host, True, version, budget, checks,
                   co_resident_sets(checks, budget), warnings, problems, _embedded_model(), sandbox)


def _sandbox(settings: Settings, warnings: list[str], problems: list[str]) -> str:
    try:
        sandbox = for_settings(settings)
    except CrewError as exc:
        problems.append(f"sandbox: {exc}")
        return "none"
    if not sandbox.confines_files:
        warnings.append(f"sandbox: agent commands: {sandbox.describe()}")
        return sandbox.describe()
    # What a command sees, so a missing tool or a visible secret shows before a run.
    shown = sandbox.visible(settings.workspaces_dir / "<run>")
    memory = ("memory and processes bounded per command (a cgroup)" if cgroup.available()
              else "memory bounded per process only (no cgroup crew may make here)")
    return f"{sandbox.describe()}; {memory}; commands see: {', '.join(shown)}, a private /tmp and HOME"


def _embedded_model() -> str | None:
    path = bundled_model_path() if embedded_available() else None
    return str(path) if path else None


async def _check_role(
    backend: OllamaBackend, settings: Settings, role: Role, budget: MemoryBudget,
    running: Mapping[str, Resident], measured: Measurements,
) -> RoleCheck:
    rs = settings.role(role)
    check = RoleCheck(role, rs.model, rs.num_ctx, pulled=False)
    try:
        facts = await backend.inspect(rs.model)
    except ModelNotPulled:
        check.fix = f"{rs.model} is not pulled: run `ollama pull {rs.model}`"
        return check
    check.pulled = True
    check.capabilities = sorted(facts.capabilities)
    check.thinking = "thinking" in facts.capabilities
    check.estimated_bytes = facts.estimate_size(rs.options())
    resident = running.get(rs.model)
    if resident is not None and resident.context_length in (None, _effective_ctx(facts, rs.num_ctx)):
        check.resident_bytes = resident.size
    known = measured.recall(rs.model, rs.num_ctx, facts.file_size)
    check.measured_bytes = known.bytes if known else None
    size = check.resident_bytes or check.measured_bytes or check.estimated_bytes
    check.fits_alone = size <= budget.bytes
    if not check.fits_alone:
        _over_budget(check, settings, facts, size, budget)
    if rs.think and not check.thinking:
        check.fix = f"{rs.model} does not support thinking: set CREW_{role.upper()}_THINK=false"
    return check


def _over_budget(check: RoleCheck, settings: Settings, facts: ModelFacts, size: int,
                 budget: MemoryBudget) -> None:
    """A role whose model is over the budget: a warning if it can run alone, else a problem."""
    setting = f"CREW_{check.role.upper()}_NUM_CTX"
    rule = OffloadRule.of(settings, budget)
    if rule.runs_alone(size):
        check.runs_alone = True
        check.warning = advice.offload_notice(check.model, size, facts, budget, setting)
        return
    fixes = advice.fixes(size, facts, budget, setting)
    error = ModelTooLarge(check.model, size, budget.bytes, fixes,
                          machine=rule.machine_memory if rule.over_machine(size) else None)
    check.fix = str(error)


def _effective_ctx(facts: ModelFacts, num_ctx: int) -> int:
    return min(num_ctx, facts.context_length) if facts.context_length else num_ctx


def co_resident_sets(checks: list[RoleCheck], budget: MemoryBudget) -> list[list[str]]:
    sized = {c.role: (c.model, c.resident_bytes or c.measured_bytes or c.estimated_bytes)
             for c in checks if c.estimated_bytes}
    found: list[list[str]] = []
    for r in range(len(sized), 1, -1):
        for combo in itertools.combinations(sized, r):
            models = {sized[role][0]: sized[role][1] or 0 for role in combo}  # a shared model counts once
            if sum(models.values()) <= budget.bytes and not any(set(combo) <= set(f) for f in found):
                found.append(list(combo))
    return found


# -- the residency plan --------------------------------------------------------------------


@dataclass
class Plan:
    budget: MemoryBudget
    co_resident: list[list[str]]
    sequence: list[str]
    loads: list[str]
    """Models loaded, in order, for the typical run."""
    max_num_ctx_together: dict[str, int | None]
    """Largest num_ctx per role that keeps Coder and Reviewer resident together (others as set)."""
    alone: list[str] = field(default_factory=list)
    """Roles whose model is over the budget and runs alone, partly on the CPU."""
    learned: dict[str, dict[str, Transition]] = field(default_factory=dict)
    """By workspace and mode: each state seen, how often, and who followed (shares, the rule's
    prior included): what the forecast a team sends is made of."""


@dataclass
class Transition:
    seen: float
    following: dict[str, float]


async def make_plan(settings: Settings, budget: MemoryBudget) -> Plan:
    backend = OllamaBackend(settings.ollama_host)
    try:
        facts = {rs.model: await backend.inspect(rs.model) for rs in settings.roles().values()}
    finally:
        await backend.aclose()
    measured = Measurements(settings.state_dir, settings.ollama_host, writable=False)
    checks = []
    for role, rs in settings.roles().items():
        known = measured.recall(rs.model, rs.num_ctx, facts[rs.model].file_size)
        checks.append(RoleCheck(role, rs.model, rs.num_ctx, True,
                                estimated_bytes=facts[rs.model].estimate_size(rs.options()),
                                measured_bytes=known.bytes if known else None))
    simulated = SimulatedBackend(facts, measured)
    # The same partial-offload rule as a run: a model too large for it fails the plan as it
    # would fail the run, with the same line.
    manager = ResidencyManager(simulated, budget, **OffloadRule.of(settings, budget).manager_options(),
                               measurements=measured)
    offloaded: set[str] = set()
    manager.subscribe(lambda e: offloaded.add(e.model) if e.type == "model_loaded" and e.partial_offload
                      else None)
    for rs in settings.roles().values():
        manager.register(rs.model, rs.options())
    # The forecast the team's Selector would send in a new workspace, so the plan evicts as a run does.
    models = {role: rs.model for role, rs in settings.roles().items()}
    team = LearnedForecast(models, Transitions(RULE))
    try:
        previous = "task"
        for role in TYPICAL_RUN:
            manager.forecast(team.turn(previous, role), source="plan")
            previous = role
            async with manager.hold(settings.role(role).model):
                pass
    finally:
        await manager.aclose()
    alone: list[str] = [role for role, rs in settings.roles().items() if rs.model in offloaded]
    return Plan(budget, co_resident_sets(checks, budget), list(TYPICAL_RUN), simulated.loads,
                _max_ctx_together(settings, facts, budget), alone, learned_transitions(settings))


def learned_transitions(settings: Settings) -> dict[str, dict[str, Transition]]:
    """What every workspace has shown so far, the states seen at least once."""
    store = TransitionStore(settings.state_dir, writable=False)
    found: dict[str, dict[str, Transition]] = {}
    for key, learned in store.all(RULE).items():
        rule = CHAT_RULE if key.startswith("chat ") else RULE
        blended = Transitions(rounds_prior(rule), learned.counts)
        found[key] = {state: Transition(sum(row.values()), blended.as_rows()[state])
                      for state, row in sorted(learned.counts.items()) if row}
    return found


def _max_ctx_together(settings: Settings, facts: Mapping[str, ModelFacts], budget: MemoryBudget
                      ) -> dict[str, int | None]:
    coder, reviewer = settings.coder, settings.reviewer
    result: dict[str, int | None] = {}
    for role, mine, other in (("coder", coder, reviewer), ("reviewer", reviewer, coder)):
        room = budget.bytes - facts[other.model].estimate_size(other.options())
        result[role] = advice.fitting_num_ctx(facts[mine.model], room, minimum=1024)
    return result


def unreachable(settings: Settings, budget: MemoryBudget, error: CrewError) -> Checkup:
    embedded = _embedded_model()
    warnings = []
    if embedded and settings.backend == "auto":
        # What `crew run` will do instead; the team as configured still cannot run.
        warnings.append(
            f"without Ollama, `crew run` falls back to the embedded backend's {BUNDLED_ALIAS} "
            "(135M parameters): enough to try crew, not to write real code"
        )
    return Checkup(settings.ollama_host, False, None, budget, [], [], warnings, [str(error)], embedded)


__all__ = ["Checkup", "OllamaUnreachable", "Plan", "make_plan", "run_checkup", "unreachable"]
