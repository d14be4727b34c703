"""The OpenAI-compatible API of `crew serve`, translated to Ollama's native API.

Ollama's own `/v1` ignores `keep_alive` and cannot take `num_ctx`, so an OpenAI client there
makes Ollama reload at its default context. Here the same requests go to `/api/chat`,
`/api/generate` and `/api/embed` inside a hold, with the server's options.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from crew.backends.ollama_api import normalize_model, ollama_errors
from crew.errors import CrewError, InputError, ModelNotPulled
from crew.serve.forward import HeldStream, Upstream, call, open_stream
from crew.serve.requests import authority, client_of, json_body

router = APIRouter(prefix="/v1")

_FINISH = {"stop": "stop", "length": "length"}


def _finish(data: dict[str, Any]) -> str:
    """OpenAI's finish_reason for an Ollama answer's done_reason."""
    return _FINISH.get(str(data.get("done_reason")), "stop")


async def _model_ids(request: Request) -> list[str]:
    auth = authority(request)
    async with ollama_errors(auth.host):
        tags = (await auth.upstream.get("/api/tags")).json()
    return [str(m.get("name") or m.get("model")) for m in tags.get("models") or []]


def _model_object(ident: str) -> dict[str, Any]:
    return {"id": ident, "object": "model", "created": 0, "owned_by": "library"}


@router.get("/models")
async def models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [_model_object(i) for i in await _model_ids(request)]}


@router.get("/models/{model:path}")
async def model(request: Request, model: str) -> dict[str, Any]:
    """OpenAI's `models.retrieve`: the model if Ollama has it pulled, else a 404."""
    ids = await _model_ids(request)
    wanted = normalize_model(model) if model.strip() else ""
    found = next((i for i in ids if i == model or i == wanted), None)
    if found is None:
        raise ModelNotPulled(model, authority(request).host)
    return _model_object(found)


@router.post("/chat/completions")
async def chat_completions(request: Request) -> Response:
    auth = authority(request)
    body = await json_body(request)
    model = await auth.ensure(_required(body, "model"))
    native = to_native_chat(body)
    client = client_of(request, auth)
    ident = f"chatcmpl-{uuid.uuid4().hex[:24]}"
    if not body.get("stream"):
        answer = await call(auth, client, "/api/chat", model, native)
        return JSONResponse(chat_completion(ident, model, answer.data))
    upstream = await open_stream(auth, client, "/api/chat", model, native)
    usage = bool((body.get("stream_options") or {}).get("include_usage"))
    return HeldStream(_chat_chunks(ident, model, upstream, usage), upstream.aclose,
                      media_type="text/event-stream")


@router.post("/completions")
async def completions(request: Request) -> Response:
    auth = authority(request)
    body = await json_body(request)
    model = await auth.ensure(_required(body, "model"))
    prompt = body.get("prompt")
    if isinstance(prompt, list):
        prompt = "".join(str(p) for p in prompt)
    native: dict[str, Any] = {"prompt": str(prompt or ""), "options": _options(body), "raw": False}
    if body.get("suffix"):
        native["suffix"] = body["suffix"]
    client = client_of(request, auth)
    ident = f"cmpl-{uuid.uuid4().hex[:24]}"
    if not body.get("stream"):
        answer = await call(auth, client, "/api/generate", model, native)
        data = answer.data
        return JSONResponse({
            "id": ident, "object": "text_completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "text": data.get("response", ""), "logprobs": None,
                         "finish_reason": _finish(data)}],
            "usage": _usage(data),
        })
    upstream = await open_stream(auth, client, "/api/generate", model, native)
    return HeldStream(_text_chunks(ident, model, upstream), upstream.aclose, media_type="text/event-stream")


@router.post("/embeddings")
async def embeddings(request: Request) -> Response:
    auth = authority(request)
    body = await json_body(request)
    model = await auth.ensure(_required(body, "model"))
    answer = await call(auth, client_of(request, auth), "/api/embed", model, {"input": body.get("input", "")})
    vectors = answer.data.get("embeddings") or []
    return JSONResponse({
        "object": "list", "model": model,
        "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
        "usage": {"prompt_tokens": answer.data.get("prompt_eval_count", 0),
                  "total_tokens": answer.data.get("prompt_eval_count", 0)},
    })


# -- requests: OpenAI -> Ollama ---------------------------------------------------------------


def to_native_chat(body: dict[str, Any]) -> dict[str, Any]:
    """An OpenAI chat request as Ollama's `/api/chat` body."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise InputError("messages is required: a non-empty list of {role, content}")
    names: dict[str, str] = {}
    native: dict[str, Any] = {"messages": [_message(m, names) for m in messages], "options": _options(body)}
    if body.get("tools"):
        native["tools"] = body["tools"]
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_object":
        native["format"] = "json"
    elif fmt.get("type") == "json_schema":
        native["format"] = (fmt.get("json_schema") or {}).get("schema") or "json"
    effort = body.get("reasoning_effort")
    if effort in ("low", "medium", "high"):
        native["think"] = effort
    return native


def _message(message: Any, names: dict[str, str]) -> dict[str, Any]:
    if not isinstance(message, dict) or "role" not in message:
        raise InputError("each of messages needs a role and content")
    out: dict[str, Any] = {"role": message["role"]}
    content = message.get("content")
    if isinstance(content, list):  # parts: text and images (as data URLs)
        if not all(isinstance(p, dict) for p in content):
            raise InputError("each part of a message's content must be an object with a type")
        out["content"] = "".join(str(p.get("text", "")) for p in content if p.get("type") == "text")
        images = [str(p["image_url"].get("url", "")).split(",", 1)[-1] for p in content
                  if p.get("type") == "image_url" and isinstance(p.get("image_url"), dict)]
        if images:
            out["images"] = images
    else:
        out["content"] = content or ""
    calls = message.get("tool_calls")
    if calls:
        if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
            raise InputError("tool_calls must be a list of objects")
        out["tool_calls"] = []
        for call in calls:
            function = call.get("function") if isinstance(call.get("function"), dict) else {}
            names[str(call.get("id"))] = str(function.get("name", ""))
            arguments = function.get("arguments") or "{}"
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else arguments
            except (ValueError, RecursionError):  # a JSON text inside a string: nested past reason
                raise InputError(f"tool call {call.get('id')} has arguments that are not JSON "
                                 "(or are nested too deep)") from None
            out["tool_calls"].append({"function": {"name": function.get("name"), "arguments": parsed}})
    if message["role"] == "tool":
        out["tool_name"] = names.get(str(message.get("tool_call_id")), message.get("name", ""))
    return out


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options: dict[str, Any] = {}
    for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("seed", "seed"),
                         ("frequency_penalty", "frequency_penalty"),
                         ("presence_penalty", "presence_penalty")):
        if body.get(theirs) is not None:
            options[ours] = body[theirs]
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    if limit is not None:
        options["num_predict"] = limit
    stop = body.get("stop")
    if stop:
        options["stop"] = [stop] if isinstance(stop, str) else list(stop)
    return options


def _required(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{name} is required")
    return value


# -- answers: Ollama -> OpenAI ----------------------------------------------------------------


def _tool_calls(message: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "index": i,
         "function": {"name": c["function"]["name"],
                      "arguments": json.dumps(c["function"].get("arguments") or {})}}
        for i, c in enumerate(message.get("tool_calls") or [])
    ]


def _usage(data: dict[str, Any]) -> dict[str, int]:
    prompt, completion = int(data.get("prompt_eval_count") or 0), int(data.get("eval_count") or 0)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def chat_completion(ident: str, model: str, data: dict[str, Any]) -> dict[str, Any]:
    message = data.get("message") or {}
    calls = _tool_calls(message)
    out: dict[str, Any] = {"role": "assistant", "content": message.get("content") or ""}
    if message.get("thinking"):
        out["reasoning"] = message["thinking"]
    if calls:
        out["tool_calls"] = calls
    finish = "tool_calls" if calls else _finish(data)
    return {"id": ident, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": out, "finish_reason": finish}], "usage": _usage(data)}


def _sse(payload: Any) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


async def _chat_chunks(
    ident: str, model: str, upstream: Upstream, include_usage: bool
) -> AsyncIterator[bytes]:
    created = int(time.time())

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _sse({"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                     "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})

    yield chunk({"role": "assistant", "content": ""})
    called = False
    try:
        async for line in upstream.lines():
            if "error" in line:
                yield _sse({"error": {"message": str(line["error"]), "type": "server_error"}})
                return
            message = line.get("message") or {}
            if message.get("thinking"):
                yield chunk({"reasoning": message["thinking"]})
            if message.get("content"):
                yield chunk({"content": message["content"]})
            calls = _tool_calls(message)
            if calls:
                called = True
                yield chunk({"tool_calls": calls})
            if line.get("done"):
                finish = "tool_calls" if called else _finish(line)
                yield chunk({}, finish)
                if include_usage:
                    yield _sse({"id": ident, "object": "chat.completion.chunk", "created": created,
                                "model": model, "choices": [], "usage": _usage(line)})
    except CrewError as exc:
        yield _sse({"error": {"message": str(exc), "type": "server_error"}})
        return
    yield b"data: [DONE]\n\n"


async def _text_chunks(ident: str, model: str, upstream: Upstream) -> AsyncIterator[bytes]:
    created = int(time.time())
    try:
        async for line in upstream.lines():
            if "error" in line:
                yield _sse({"error": {"message": str(line["error"]), "type": "server_error"}})
                return
            finish = _finish(line) if line.get("done") else None
            yield _sse({"id": ident, "object": "text_completion", "created": created, "model": model,
                        "choices": [{"index": 0, "text": line.get("response", ""), "finish_reason": finish}]})
    except CrewError as exc:
        yield _sse({"error": {"message": str(exc), "type": "server_error"}})
        return
    yield b"data: [DONE]\n\n"
