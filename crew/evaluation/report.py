"""What an eval found: `eval.json` (rates as fractions, every result) and `eval.md` (a table per
config), and with matplotlib installed a PNG chart of pass rates."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from statistics import mean
from typing import Any

from crew.evaluation.runner import Result
from crew.files import write_atomic, write_json


def summarize(results: list[Result], configs: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for config in configs:
        mine = [r for r in results if r.config == config]
        if not mine:
            continue
        n = len(mine)
        out[config] = {
            "exercises": n,
            "pass@1": sum(r.passed_try == 1 for r in mine) / n,
            "pass@2": sum(r.passed_try in (1, 2) for r in mine) / n,
            "mean_tokens": mean(r.prompt_tokens + r.completion_tokens for r in mine),
            "mean_seconds": mean(r.seconds for r in mine),
            "loads": sum(r.loads for r in mine),
            "load_seconds": sum(r.load_seconds for r in mine),
            "errors": sum(r.error is not None for r in mine),
        }
    return out


def write_report(out: Path, results: list[Result], configs: list[str]) -> dict[str, Any]:
    ordered = sorted(results, key=lambda r: (configs.index(r.config) if r.config in configs else 99,
                                             r.exercise))
    summary = summarize(ordered, configs)
    data: dict[str, Any] = {"configs": summary, "results": [asdict(r) for r in ordered]}
    write_json(out / "eval.json", data)
    write_atomic(out / "eval.md", markdown(data).encode())
    _chart(out / "eval.png", summary)
    return data


def markdown(data: dict[str, Any]) -> str:
    lines = ["# crew eval", "",
             "| config | exercises | pass@1 | pass@2 | mean tokens | mean s | loads | errors |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for config, s in data["configs"].items():
        lines.append(f"| {config} | {s['exercises']} | {s['pass@1']:.0%} | {s['pass@2']:.0%} | "
                     f"{s['mean_tokens']:.0f} | {s['mean_seconds']:.1f} | {s['loads']} | {s['errors']} |")
    lines += ["", "| exercise | config | passed on try | tokens | s | loads | stop |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in data["results"]:
        tokens = r["prompt_tokens"] + r["completion_tokens"]
        stop = r["error"] or r["stop_reason"]
        lines.append(f"| {r['exercise']} | {r['config']} | {r['passed_try'] or '-'} | {tokens} | "
                     f"{r['seconds']:.1f} | {r['loads']} | {stop} |")
    return "\n".join(lines) + "\n"


def _chart(path: Path, configs: dict[str, Any]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return  # optional: the table says the same
    names = list(configs)
    figure, axes = plt.subplots(figsize=(6, 3))
    axes.bar([f"{n}\npass@1" for n in names], [configs[n]["pass@1"] for n in names])
    axes.bar([f"{n}\npass@2" for n in names], [configs[n]["pass@2"] for n in names])
    axes.set_ylim(0, 1)
    axes.set_ylabel("pass rate")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
