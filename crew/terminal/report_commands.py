"""The commands that report and change nothing: `crew ps`, `doctor`, `models`, `plan`, `runs`,
`config`. Each reads, prints a table (or JSON with --json) and returns its exit code."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict
from typing import Any

from crew.errors import CrewError
from crew.terminal.exits import EXIT_ERROR, EXIT_NOT_APPROVED, EXIT_OK, arun
from crew.terminal.notices import gb
from crew.terminal.tables import emit_json, table


def cmd_ps(args: argparse.Namespace) -> int:
    from crew.residency.budget import GB, resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    if not settings.hosts:
        budget = resolve_budget(settings.memory_budget_gb)
        models, used = _resident_on(settings, settings.ollama_host)
        if args.json_:
            emit_json({"host": settings.ollama_host, "used": used, "models": [asdict(m) for m in models],
                        "budget": {"bytes": budget.bytes, "source": budget.source}})
        else:
            _print_resident(models, f"{gb(used)} of {gb(budget.bytes)} budget ({budget.source})")
        return EXIT_OK
    # Several hosts: every one is shown, one that does not answer among them; then its error.
    shown: list[dict[str, Any]] = []
    failure: CrewError | None = None
    for host in settings.hosts:
        budget_bytes = int(host.memory_budget_gb * GB) if host.memory_budget_gb else None
        budget_json = {"bytes": budget_bytes, "source": "[[hosts]]"} if budget_bytes else None
        entry: dict[str, Any] = {"name": host.label, "host": host.url, "budget": budget_json}
        if not args.json_:
            print(f"── {host.label} ({host.url}) ──")
        try:
            models, used = _resident_on(settings, host.url)
        except CrewError as exc:
            failure = failure or exc
            shown.append({**entry, "error": str(exc)})
            if not args.json_:
                print(f"does not answer: {exc}\n")
            continue
        shown.append({**entry, "used": used, "models": [asdict(m) for m in models]})
        if not args.json_:
            of = f" of {gb(budget_bytes)} budget" if budget_bytes else " resident"
            _print_resident(models, f"{gb(used)}{of}")
            print()
    if args.json_:
        emit_json({"hosts": shown})
    if failure is not None:
        raise failure
    return EXIT_OK


def _resident_on(settings: Any, url: str) -> tuple[list[Any], int]:
    """What one Ollama host holds and who keeps it; the bytes resident."""
    from crew.backends.ollama_api import running_on
    from crew.residency.holders import holders, who_holds

    running = running_on(url)
    return who_holds(running, holders(settings.state_dir / "holders", url)), sum(r.size for r in running)


def _print_resident(models: list[Any], total: str) -> None:
    fleet = any(m.host for m in models)  # behind `crew serve --ray`: which host holds each
    rows: list[tuple[str, ...]] = [(*(("HOST",) if fleet else ()), "NAME", "SIZE", "ON GPU", "CONTEXT",
                                    "SINCE", "UNTIL", "KEPT BY")]
    for m in models:
        share = f"{100 * m.gpu_share:.0f}%" if m.gpu_share is not None else "-"
        until = "forever" if m.pinned_forever else _clock(m.expires_at)
        held = m.held_by
        by = f"crew {held['pid']} ({held['run']})" if held else "crew (exited)" if m.kept_by_crew else "-"
        rows.append((*((m.host or "-",) if fleet else ()), m.name, gb(m.size), share,
                     str(m.context_length or "-"), _clock(m.since), until, by))
    table(rows)
    print(f"\n{total}")
    for m in models:
        if m.orphaned:
            print(f"{m.name} is pinned by a crew that ended without handing it back (killed?): "
                  f"`ollama stop {m.name}` frees it; a new crew run evicts it when it needs room")


def _clock(moment: Any) -> str:
    return moment.astimezone().strftime("%H:%M:%S") if moment else "-"


def cmd_doctor(args: argparse.Namespace) -> int:
    from crew.errors import OllamaUnreachable
    from crew.reports.doctor import run_checkup, unreachable
    from crew.residency.budget import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    budget = resolve_budget(settings.memory_budget_gb)
    try:
        checkup = arun(run_checkup(settings, budget))
    except OllamaUnreachable as exc:
        checkup = unreachable(settings, budget, exc)
    code = EXIT_OK if checkup.can_run else EXIT_ERROR if not checkup.reachable else EXIT_NOT_APPROVED
    if args.json_:
        from dataclasses import asdict

        emit_json({**asdict(checkup), "can_run": checkup.can_run, "exit_code": code})
        return code
    mark = {True: "ok", False: "NO", None: "?"}
    print(f"ollama   {checkup.host}: " + (f"reachable, version {checkup.version}" if checkup.reachable
                                          else "NOT reachable"))
    print(f"budget   {gb(budget.bytes)} ({budget.source})")
    if checkup.sandbox:
        print(f"sandbox  {checkup.sandbox}")
    if checkup.roles:
        rows: list[tuple[str, ...]] = [("ROLE", "MODEL", "PULLED", "THINK", "NUM_CTX", "SIZE", "FITS")]
        for c in checkup.roles:
            size = c.resident_bytes or c.estimated_bytes
            rows.append((c.role, c.model, mark[c.pulled], "yes" if c.thinking else "no", str(c.num_ctx),
                         gb(size) if size else "-", "alone" if c.runs_alone else mark[c.fits_alone]))
        print()
        table(rows)
        together = ["+".join(s) for s in checkup.co_resident] or ["none: every switch loads"]
        print(f"\nresident together: {', '.join(together)}")
    for warning in checkup.warnings:
        print(f"warning: {warning}")
    for problem in checkup.problems:
        print(f"problem: {problem}")
    print("\nthe team can run" if checkup.can_run else "\nthe team cannot run until the problems are fixed")
    return code


def cmd_models(args: argparse.Namespace) -> int:
    from crew.reports.doctor import run_checkup
    from crew.residency.budget import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    checkup = arun(run_checkup(settings, resolve_budget(settings.memory_budget_gb)))
    from crew.routing import DEFAULT_ROLE, routing_table
    from crew.settings import ROLES

    table_in_effect = routing_table(settings.routing)
    routing = {role: [kind for kind, r in table_in_effect.items() if r == role] for role in ROLES}
    if args.json_:
        from dataclasses import asdict

        emit_json({"roles": [asdict(c) for c in checkup.roles], "task_routing": routing,
                   "default_role": DEFAULT_ROLE})
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("ROLE", "MODEL", "NUM_CTX", "ESTIMATED", "LEARNED", "CAPABILITIES")]
    for c in checkup.roles:
        learned = c.resident_bytes or c.measured_bytes
        rows.append((c.role, c.model, str(c.num_ctx), gb(c.estimated_bytes) if c.estimated_bytes else "-",
                     gb(learned) if learned else "-", ",".join(c.capabilities) or "-"))
    table(rows)
    print()
    table([("TASK TYPE", "ROLE")] + [(", ".join(w), r) for r, w in routing.items()]
          + [("(any other)", DEFAULT_ROLE)])
    return EXIT_OK


def cmd_plan(args: argparse.Namespace) -> int:
    from crew.reports.doctor import make_plan
    from crew.residency.budget import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    plan = arun(make_plan(settings, resolve_budget(settings.memory_budget_gb)))
    if args.json_:
        from dataclasses import asdict

        emit_json(asdict(plan))
        return EXIT_OK
    print(f"budget {gb(plan.budget.bytes)} ({plan.budget.source})")
    together = ["+".join(s) for s in plan.co_resident] or ["none"]
    print(f"roles resident together: {', '.join(together)}")
    print(f"typical run: {' -> '.join(plan.sequence)}")
    if plan.alone:
        print(f"runs alone, partly on the CPU (over the budget): {', '.join(plan.alone)}")
    print(f"expected loads: {len(plan.loads)} ({', '.join(plan.loads)})")
    for role, ctx in plan.max_num_ctx_together.items():
        print(f"largest {role} num_ctx keeping coder+reviewer together: {ctx if ctx else 'none fits'}")
    if not plan.learned:
        print("learned transitions: none yet (the workflow's rule decides)")
    for key, states in plan.learned.items():
        print(f"learned transitions, {key}:")
        for state, seen in states.items():
            shares = ", ".join(f"{nxt} {share:.0%}" for nxt, share in seen.following.items())
            print(f"  after {state} ({seen.seen:g} seen): {shares}")
    return EXIT_OK


def cmd_runs(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from crew.reports.past_runs import find_run, list_runs, read_run
    from crew.settings import load_settings

    settings = load_settings()
    if args.action == "show":
        folder = find_run(settings.workspaces_dir, args.run_id or "")
        if args.timeline or args.png:
            from crew.reports import timeline

            line = timeline.build(timeline.read_events(folder))
            if args.png:
                timeline.chart(line, args.png)
                print(f"wrote {args.png}")
            if args.timeline:
                print("\n".join(timeline.render(line)))
            return EXIT_OK
        record = read_run(folder)
        summary = folder / "summary.json"
        data = json.loads(summary.read_text()) if record.complete else asdict(record)
        emit_json(data)
        return EXIT_OK
    runs = list_runs(settings.workspaces_dir)
    if args.json_:
        emit_json([asdict(r) for r in runs])
        return EXIT_OK
    rows: list[tuple[str, ...]] = [("ID", "SPEC", "STARTED", "SECONDS", "VERDICT", "LOADS", "TOKENS")]
    for r in runs:
        started = time.strftime("%Y-%m-%d %H:%M", time.localtime(r.started)) if r.started else "-"
        rows.append((r.id, r.spec or "-", started, f"{r.seconds:.0f}" if r.seconds is not None else "-",
                     r.verdict or "incomplete", str(r.loads if r.loads is not None else "-"),
                     str(r.tokens if r.tokens is not None else "-")))
    table(rows)
    return EXIT_OK


def cmd_config(args: argparse.Namespace) -> int:
    from crew.residency.budget import resolve_budget
    from crew.settings import load_settings

    settings = load_settings()
    budget = resolve_budget(settings.memory_budget_gb)
    data = settings.model_dump(mode="json")
    data["memory_budget"] = {"bytes": budget.bytes, "source": budget.source}
    if args.json_:
        print(json.dumps(data, indent=2))
        return EXIT_OK
    print(f"ollama_host        {settings.ollama_host}")
    for host in settings.hosts:  # several hosts (`crew ps` shows them all)
        budget_gb = f", {host.memory_budget_gb:g} GB" if host.memory_budget_gb else ""
        print(f"host               {host.label} ({host.url}{budget_gb})")
    print(f"memory budget      {gb(budget.bytes)} ({budget.source})")
    offload = {True: "allowed", False: "refused", "auto": "auto (when the machine's memory holds the model)"}
    print(f"partial offload    {offload[settings.allow_partial_offload]}")
    rows: list[tuple[str, ...]] = [("ROLE", "MODEL", "NUM_CTX", "TEMP", "THINK", "TIMEOUT")]
    for role, rs in settings.roles().items():
        think = "auto" if rs.think is None else str(rs.think).lower()
        rows.append((role, rs.model, str(rs.num_ctx), f"{rs.temperature:g}", think, f"{rs.timeout_s:g}s"))
    print()
    table(rows)
    return EXIT_OK
