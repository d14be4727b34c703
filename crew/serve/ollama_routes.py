"""Ollama's native API, as `crew serve` answers it: what the official client, Open WebUI and
Continue call, unchanged for them, with every model request inside a hold.

Reads (`/api/tags`, `/api/show`, `/api/version`) pass through; `/api/show` reports the num_ctx
the server will use, so a client that sizes its prompts from it (Continue) sizes them right.
`/api/ps` adds who holds and who waits for each model. A load request (no messages) loads
through the manager; an unload request (`keep_alive: 0`) is answered but not obeyed: what
leaves memory is the server's decision. Model management answers 501.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from crew import __version__
from crew.backends.ollama_api import ollama_errors
from crew.errors import CrewError, InputError
from crew.serve.authority import Authority, Client
from crew.serve.forward import HeldStream, Upstream, call, ndjson, open_stream
from crew.serve.requests import authority, client_of, json_body, note, now_iso

router = APIRouter()

MANAGED_BY_OLLAMA = ("pull", "push", "create", "copy", "delete")


@router.get("/")
async def root() -> Response:
    return Response("Ollama is running", media_type="text/plain")


@router.head("/")
async def root_head() -> Response:
    return Response(media_type="text/plain")


@router.get("/api/version")
async def version(request: Request) -> dict[str, Any]:
    auth = authority(request)
    async with ollama_errors(auth.host):
        answer = await auth.upstream.get("/api/version")
    upstream = answer.json() if answer.status_code == 200 else {}
    # `crew` tells another crew that this is a crew server (it then does no loading of its own).
    return {"version": upstream.get("version", "unknown"), "crew": __version__}


@router.get("/api/tags")
async def tags(request: Request) -> Response:
    return await _pass_get(request, "/api/tags")


@router.post("/api/show")
async def show(request: Request) -> Response:
    auth = authority(request)
    body = await json_body(request)
    model = await auth.ensure(_model_field(body))
    async with ollama_errors(auth.host, model):
        answer = await auth.upstream.post("/api/show", json={**body, "model": model})
    if answer.status_code != 200:
        return _relay(answer.status_code, answer.content)
    data = answer.json()
    num_ctx = auth.runner_options(model).get("num_ctx")
    if num_ctx and isinstance(data, dict):
        lines = [ln for ln in str(data.get("parameters") or "").splitlines() if not ln.startswith("num_ctx")]
        data["parameters"] = "\n".join([*lines, f"num_ctx {num_ctx}"])
    return JSONResponse(data)


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    auth = authority(request)
    async with ollama_errors(auth.host):
        answer = await auth.upstream.get("/api/ps")
    data = answer.json() if answer.status_code == 200 else {"models": []}
    holders = auth.manager.holders()
    waiting = auth.manager.waiting()
    for entry in data.get("models") or []:
        name = str(entry.get("name") or entry.get("model") or "")
        entry["crew"] = {
            "role": auth.role_of(name),
            "holders": [str(h) for h in holders.get(name, [])],
            "waiting": waiting.get(name, 0),
        }
    snap = auth.manager.snapshot()
    data["crew"] = {"budget": snap.budget.bytes, "used": snap.used, "waiting": waiting}
    return data


@router.post("/api/chat")
async def chat(request: Request) -> Response:
    return await _model_request(request, "/api/chat", "messages")


@router.post("/api/generate")
async def generate(request: Request) -> Response:
    return await _model_request(request, "/api/generate", "prompt")


@router.post("/api/embed")
async def embed(request: Request) -> Response:
    return await _whole(request, "/api/embed")


@router.post("/api/embeddings")
async def embeddings(request: Request) -> Response:
    return await _whole(request, "/api/embeddings")


def _managed(action: str) -> Any:
    async def refuse(request: Request) -> Response:
        auth = authority(request)
        return JSONResponse({"error": (
            f"crew serve does not {action} models: run `ollama {action}` against Ollama itself "
            f"(OLLAMA_HOST={auth.host})"
        )}, status_code=501)
    return refuse


for _action in MANAGED_BY_OLLAMA:
    router.add_api_route(f"/api/{_action}", _managed(_action), methods=["POST", "DELETE"])
router.add_api_route("/api/blobs/{digest}", _managed("create"), methods=["HEAD", "POST"])


# -- the model requests ------------------------------------------------------------------------


async def _model_request(request: Request, path: str, content_field: str) -> Response:
    auth = authority(request)
    body = await json_body(request)
    model = await auth.ensure(_model_field(body), body)
    client = client_of(request, auth)
    if not body.get(content_field) and not body.get("suffix"):
        return await _load_or_unload(request, auth, client, model, body, generate=path == "/api/generate")
    if body.get("stream", True) is False:
        answer = await call(auth, client, path, model, body)
        return JSONResponse(answer.data, headers=answer.ticket.headers())
    upstream = await open_stream(auth, client, path, model, body)
    return HeldStream(_relay_lines(upstream), upstream.aclose, media_type="application/x-ndjson",
                      headers=upstream.ticket.headers())


async def _relay_lines(upstream: Upstream) -> AsyncIterator[bytes]:
    try:
        async for line in upstream.lines():
            yield ndjson(line)
    except CrewError as exc:  # after a 200 has begun, Ollama's own way: an error line
        yield ndjson({"error": str(exc)})


async def _load_or_unload(
    request: Request, auth: Authority, client: Client, model: str, body: dict[str, Any], *, generate: bool
) -> Response:
    keep_alive = body.get("keep_alive")
    headers: dict[str, str] = {}
    if keep_alive in (0, "0", "0s", "0m"):
        # Open WebUI's "unload": other clients may be using the model; the manager decides.
        note(request, model)  # no hold is taken, which would note it
        reason = "unload"
    else:
        held, ticket = await auth.acquire(model, client)  # loaded and kept: nothing to run on it
        auth.release(held)
        reason = "load"
        headers = ticket.headers()
    done: dict[str, Any] = {"model": model, "created_at": now_iso(), "done": True, "done_reason": reason}
    if generate:
        done["response"] = ""
    else:
        done["message"] = {"role": "assistant", "content": ""}
    return JSONResponse(done, headers=headers)


async def _whole(request: Request, path: str) -> Response:
    auth = authority(request)
    body = await json_body(request)
    model = await auth.ensure(_model_field(body))
    answer = await call(auth, client_of(request, auth), path, model, body)
    return JSONResponse(answer.data, headers=answer.ticket.headers())


async def _pass_get(request: Request, path: str) -> Response:
    auth = authority(request)
    async with ollama_errors(auth.host):
        answer = await auth.upstream.get(path)
    return _relay(answer.status_code, answer.content)


def _relay(status: int, content: bytes) -> Response:
    return Response(content, status_code=status, media_type="application/json")


def _model_field(body: dict[str, Any]) -> str:
    model = body.get("model") or body.get("name")
    if not isinstance(model, str) or not model.strip():
        raise InputError("model is required: name a pulled model, e.g. \"model\": \"qwen3:14b\"")
    return model
