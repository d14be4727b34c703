"""One run: a spec in, the team at work in a workspace, code, a patch and records out.

The session (`crew.session`) writes the records as things happen and, whatever ends the run
(approval, a limit, an error, Ctrl-C), the team state, `crew.patch` and `summary.json` before
it returns, so nothing already said is lost and `--resume` can continue.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autogen_agentchat.base import TaskResult
from autogen_agentchat.messages import BaseChatMessage, TextMessage
from autogen_core import CancellationToken

from crew.errors import CrewError, InputError
from crew.events import AgentMessage, Event, parse_event
from crew.records import AgentStats, Records
from crew.session import check_resumable, open_session
from crew.settings import Role, Settings
from crew.team import Team, record
from crew.workspace.repo import Workspace
from crew.workspace.tools import kill_running_commands

MAX_SPEC_BYTES = 1_000_000


def read_spec(path: Path) -> str:
    """The spec's text; InputError for a missing, empty, binary or huge file."""
    if not path.is_file():
        raise InputError(f"spec file {path} does not exist: give the path of a Markdown or text file")
    data = path.read_bytes()
    if len(data) > MAX_SPEC_BYTES:
        raise InputError(f"spec file {path} is {len(data)} bytes; keep it under {MAX_SPEC_BYTES} bytes")
    if b"\0" in data:
        raise InputError(f"spec file {path} is binary: give a text file that describes the work")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"spec file {path} is not UTF-8 text: save it as UTF-8") from None
    if not text.strip():
        raise InputError(f"spec file {path} is empty: describe what the team should build")
    return text


@dataclass
class Outcome:
    workspace: Workspace
    approved: bool
    stop_reason: str
    agents: dict[str, AgentStats] = field(default_factory=dict)
    loads: int = 0
    """Model loads during the run (an agent's stats count a model shared by roles once each)."""
    load_seconds: float = 0.0
    left_out: list[str] = field(default_factory=list)
    """Files left out of crew.patch (`name: why`): binaries, files over the size limit."""


async def run_spec(
    settings: Settings,
    spec: Path | None,
    *,
    render: Callable[[Event], None],
    workspace_path: Path | None = None,
    repo: Path | None = None,
    resume: Path | None = None,
    max_turns: int | None = None,
    solo: Role | None = None,
    follow_up: str | None = None,
    hidden: Sequence[Path] = (),
) -> Outcome:
    """Run the team (or, with `solo`, one agent on that role's model) on a spec; or continue a
    stopped run (`resume`), with `follow_up` said to it first if given. `hidden`: paths the
    agents' commands must not see, beyond what the settings hide (an eval's suite)."""
    task = read_spec(spec) if spec is not None else None
    if task is None and resume is None:
        raise InputError("give a spec file to run, or --resume workspaces/<id> to continue a run")
    if resume is not None:
        check_resumable(resume)
    async with open_session(settings, mode="run", render=render, spec=spec, task=task, resume=resume,
                            workspace_path=workspace_path, repo=repo, hidden=hidden) as session:
        team = await session.build_team(max_turns=max_turns, solo=solo)
        given: str | list[BaseChatMessage] | None = task
        replayed: set[str] = set()
        if resume is not None:
            restored = await session.restore()
            given = [TextMessage(source=s, content=c) for s, c in restored.replay] or None
            if restored.recorded:
                replayed = {m.id for m in given or []}
            if follow_up is not None:
                said = TextMessage(source="user", content=follow_up)
                record(session.records, said)
                replayed.add(said.id)
                given = [*(given or []), said]
        elif task is not None:
            record(session.records, TextMessage(source="user", content=task))
        token = CancellationToken()
        consuming = asyncio.ensure_future(_consume(team, given, session.records, token, replayed))
        try:
            # Shielded: on Ctrl-C the team's stream must not be cancelled first, or AutoGen waits
            # for the agent's whole generation before it stops. Cut the model calls, then stop it.
            session.stop_reason = await asyncio.shield(consuming)
        except asyncio.CancelledError:
            # Cut the calls in flight and mark them interrupted (so a call still waiting for its
            # model never starts), then stop the team; bounded, so a stuck stream cannot hold
            # the cleanup (state, patch, models handed back) hostage.
            await team.interrupt()
            kill_running_commands()
            token.cancel()
            await team.close()
            consuming.cancel()
            await asyncio.wait({consuming}, timeout=STOP_GRACE_S)
            if consuming.done() and not consuming.cancelled():
                consuming.exception()  # retrieved: the interrupt is what is reported
            raise
        except RuntimeError as exc:
            raise (team.failure() or CrewError(f"an agent failed: {exc}")) from None
    records = session.records
    return Outcome(session.workspace, records.approved, session.stop_reason, records.stats,
                   records.loads, records.load_seconds, records.left_out)


# How long a cancelled team may take to stop before the session closes without it (a call that
# waits for a load ends only when the load does): short, as `docker stop` kills after 10 s.
STOP_GRACE_S = 3.0


async def _consume(
    team: Team, task: str | list[BaseChatMessage] | None, records: Records, token: CancellationToken,
    replayed: set[str],
) -> str:
    """Feed the team's stream into the records; the stop reason. `replayed`: ids of messages
    handed back to the team on resume, recorded already."""
    stop_reason = "stopped"
    async for item in team.chat.run_stream(task=task, cancellation_token=token):
        if isinstance(item, TaskResult):
            stop_reason = _stop_reason(item, records.approved)
        elif isinstance(item, BaseChatMessage) and (
            item.id in replayed or isinstance(task, str) and item.source == "user"
        ):
            records.release(item.id)  # recorded already; decisions about it may go out
        else:
            record(records, item)
    return stop_reason


def _stop_reason(result: TaskResult, was_approved: bool) -> str:
    if was_approved:
        return "approved"
    reason = result.stop_reason or "stopped"
    if "Maximum number of turns" in reason:
        return f"turn limit ({reason})"
    return reason


def export_run(outcome: Outcome, out: Path) -> None:
    """crew.patch, summary.json and review.md (the Reviewer's last word) into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    root = outcome.workspace.root
    for name in ("crew.patch", "summary.json"):
        shutil.copyfile(root / name, out / name)
    events = [parse_event(line) for line in (root / "events.jsonl").read_text().splitlines() if line.strip()]
    last = next((e.content for e in reversed(events)
                 if isinstance(e, AgentMessage) and e.source == "Reviewer"), "_The Reviewer did not speak._")
    head = "✅ **Approved**" if outcome.approved else f"❌ **Not approved** ({outcome.stop_reason})"
    (out / "review.md").write_text(f"## crew run: {head}\n\n{last}\n")
