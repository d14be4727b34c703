"""One crew without a server, as its own process: the team's workflow (Architect, Coder,
Reviewer, Coder, Reviewer) through the manager `crew run` opens (`open_manager`, from the
CREW_* environment), each call a real chat to Ollama while the model is held. Exits 0 when every
call was answered; else prints the error in one line and exits 2.

    python -m tests.crew_process [DELAY_S]

With DELAY_S, the crew starts that long after the process (staggered starts: one crew plans
while another codes or reviews).
"""

from __future__ import annotations

import asyncio
import sys

import httpx

from crew.backends.registry import choose_backend
from crew.errors import CrewError
from crew.residency.opening import open_manager
from crew.residency.transitions import LearnedForecast, Transitions
from crew.routing import RULE
from crew.settings import load_settings

WORKFLOW = ["architect", "coder", "reviewer", "coder", "reviewer"]


async def main() -> int:
    if len(sys.argv) > 1:
        await asyncio.sleep(float(sys.argv[1]))  # the scenario's stagger, not a synchronisation
    settings = load_settings()
    choice = await choose_backend(settings)
    manager = open_manager(settings, choice, "test crew")
    models = choice.models()
    for role, model in models.items():
        manager.register(model, settings.role(role).options())
    team = LearnedForecast(models, Transitions(RULE))
    lease = getattr(choice.backend, "lease_s", None)
    http = httpx.AsyncClient(base_url=settings.ollama_host, timeout=60)
    try:
        previous = "task"
        for role in WORKFLOW:
            manager.forecast(team.turn(previous, role), source="team")  # type: ignore[arg-type]
            previous = role
            model = models[role]  # type: ignore[index]
            async with manager.hold(model):
                answer = await http.post("/api/chat", json={
                    "model": model, "messages": [{"role": "user", "content": role}], "stream": False,
                    "options": manager.options(model), "keep_alive": lease})
                answer.raise_for_status()
    except (CrewError, httpx.HTTPError) as exc:
        print(f"crew process: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        await http.aclose()
        await manager.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
