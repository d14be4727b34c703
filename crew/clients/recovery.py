"""Tool calls that arrived as text, and file edits written as fenced blocks, turned into calls.

Qwen3 through Ollama often loses a tool call: qwen3-coder writes
`<tool_call><function=NAME><parameter=P>…</parameter></function></tool_call>`, and when Ollama's
parser fails (long file writes above all) or the model leaves out `<tool_call>`, the call
arrives as plain content. Other models answer a call as a JSON object in content. And models
write code better as plain markdown than escaped inside JSON, so a fenced block under a path
(```` ```python hello.py ````) or an aider-style SEARCH/REPLACE block is an edit too. Each of
these becomes a call of the agent's own tools (`write_file`, `edit_file`, ...), which run with
the same confinement and checks as any call. What is incomplete or names no tool of the agent
is never run: it becomes a `problem`, one line the model is told.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

Form = Literal["xml", "json", "fenced", "search_replace"]

_FUNCTION = re.compile(r"<function=([^>\s]+)\s*>(.*?)(</function>|$)", re.DOTALL)
# A parameter ends at its closing tag, at the next parameter, or where its function closes.
_PARAMETER = re.compile(r"<parameter=([^>\s]+)\s*>(.*?)(?:</parameter>|(?=<parameter=)|$)", re.DOTALL)
_TOOL_CALL_TAGS = re.compile(r"</?tool_call>")
_FENCE = re.compile(
    r"(?m)^(?P<fence>`{3,}|~{3,})(?P<info>[^\n`]*)\n(?P<body>.*?)^(?P=fence)[ \t]*$", re.DOTALL)
_SEARCH_REPLACE = re.compile(
    r"(?m)^(?P<path>[^\n<>=`]*\S)[ \t]*\n(?:(?:`{3,}|~{3,})[^\n]*\n)?"
    r"<{5,9} SEARCH[ \t]*\n(?P<old>.*?)^={5,9}[ \t]*\n(?P<new>.*?)^>{5,9} REPLACE[ \t]*$"
    r"(?:\n(?:`{3,}|~{3,})[ \t]*$)?", re.DOTALL)
# A file name with a letter-led extension (hello.py, src/app.ts), or a path with a folder.
_PATH = re.compile(r"^[\w.\-/]*[\w\-]\.[A-Za-z]\w*$|^[\w.\-]+/[\w.\-/]+$")


@dataclass(frozen=True)
class Recovered:
    name: str
    arguments: dict[str, Any]
    form: Form


@dataclass
class Recovery:
    calls: list[Recovered] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    prose: str = ""
    """The text around what was recovered."""


def recover(content: str, tools: Mapping[str, Mapping[str, Any]], *, blocks: bool) -> Recovery:
    """The calls `content` holds, for an agent whose tools are `tools` (name -> the JSON schema
    of its parameters). `blocks`: fenced blocks and SEARCH/REPLACE blocks are edits too."""
    found = _xml_calls(content, tools)
    if found.calls or found.problems:
        return found
    found = _json_calls(content, tools)
    if found.calls or found.problems:
        return found
    if blocks:
        return _block_edits(content, tools)
    return Recovery(prose=content)


# -- qwen3-coder's XML ------------------------------------------------------------------------


def _xml_calls(content: str, tools: Mapping[str, Mapping[str, Any]]) -> Recovery:
    result = Recovery()
    spans: list[tuple[int, int]] = []
    for match in _FUNCTION.finditer(content):
        name, body, closed = match.group(1), match.group(2), match.group(3)
        spans.append(match.span())
        if not closed:
            result.problems.append(
                f"your call of {name} was cut off before </function>: nothing ran; send it again, "
                "complete (for a long file, write it as a fenced block under its path instead)")
            continue
        if name not in tools:
            result.problems.append(f"there is no tool {name}: nothing ran; use one of {', '.join(tools)}")
            continue
        properties = tools[name].get("properties") or {}
        arguments: dict[str, Any] = {
            key: _typed(_strip_one_newline(value), properties.get(key) or {})
            for key, value in _PARAMETER.findall(body)
        }
        missing = _missing(tools[name], arguments)
        if missing:
            result.problems.append(f"your call of {name} lacks {', '.join(missing)}: nothing ran")
        else:
            result.calls.append(Recovered(name, arguments, "xml"))
    if result.calls and result.problems:
        # Some calls complete, some not: running half of what was meant is worse than none.
        result.calls = []
    result.prose = _TOOL_CALL_TAGS.sub("", _cut(content, spans)).strip()
    return result


def _strip_one_newline(value: str) -> str:
    value = value[1:] if value.startswith("\n") else value
    return value[:-1] if value.endswith("\n") else value


def _typed(value: str, schema: Mapping[str, Any]) -> Any:
    if schema.get("type") in ("integer", "number", "boolean", "array", "object"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# -- a JSON object in content -----------------------------------------------------------------


def _json_calls(content: str, tools: Mapping[str, Mapping[str, Any]]) -> Recovery:
    text = content.strip()
    fenced = _FENCE.fullmatch(text)
    if fenced and fenced.group("info").strip() in ("", "json"):
        text = fenced.group("body").strip()
    if not text.startswith(("{", "[")):
        return Recovery(prose=content)
    try:
        data = json.loads(text)
    except ValueError:
        return Recovery(prose=content)
    items = data if isinstance(data, list) else [data]
    result = Recovery()
    for item in items:
        named = _named_call(item)
        if named is None:
            return Recovery(prose=content)  # JSON, but not a call: an answer in JSON
        name, arguments = named
        if name not in tools:
            return Recovery(prose=content)
        if not isinstance(arguments, dict):
            result.problems.append(
                f"the arguments of your call of {name} are not a JSON object: nothing ran")
            continue
        missing = _missing(tools[name], arguments)
        if missing:
            result.problems.append(f"your call of {name} lacks {', '.join(missing)}: nothing ran")
            continue
        result.calls.append(Recovered(name, arguments, "json"))
    if result.problems:
        result.calls = []
    return result


def _named_call(item: Any) -> tuple[str, Any] | None:
    if not isinstance(item, dict):
        return None
    if isinstance(item.get("function"), dict):
        item = item["function"]
    name = item.get("name") or item.get("tool")
    if not isinstance(name, str):
        return None
    arguments = next((item[k] for k in ("arguments", "parameters", "args", "input") if k in item), None)
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            return name, arguments
    return name, arguments if arguments is not None else {}


# -- fenced blocks ----------------------------------------------------------------------------


def _block_edits(content: str, tools: Mapping[str, Mapping[str, Any]]) -> Recovery:
    result = Recovery()
    spans: list[tuple[int, int]] = []
    if "edit_file" in tools:
        for match in _SEARCH_REPLACE.finditer(content):
            path = match.group("path").strip().strip("`*")
            if not _PATH.match(path):
                continue
            spans.append(match.span())
            result.calls.append(Recovered("edit_file", {"path": path, "old": match.group("old"),
                                                        "new": match.group("new")}, "search_replace"))
    if "write_file" in tools:
        for match in _FENCE.finditer(content):
            if any(start <= match.start() < end for start, end in spans):
                continue  # the fence around a SEARCH/REPLACE block
            path = _path_of(match.group("info"))
            if path is None:
                continue
            spans.append(match.span())
            result.calls.append(Recovered("write_file", {"path": path, "content": match.group("body")},
                                          "fenced"))
    result.prose = _cut(content, spans).strip()
    return result


def _path_of(info: str) -> str | None:
    """The path an info line names (```` ```python hello.py ````, ```` ```src/app.py ````)."""
    words = info.strip().split()
    candidates = [w.strip("`*") for w in words if _PATH.match(w.strip("`*"))]
    return candidates[-1] if candidates else None


# -- shared -----------------------------------------------------------------------------------


def _missing(schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> list[str]:
    required = schema.get("required") or []
    return [name for name in required if name not in arguments]


def _cut(content: str, spans: list[tuple[int, int]]) -> str:
    kept, last = [], 0
    for start, end in sorted(spans):
        kept.append(content[last:start])
        last = max(last, end)
    kept.append(content[last:])
    return "".join(kept)
