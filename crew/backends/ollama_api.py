"""Ollama's HTTP API as crew reads it: the one seam where foreign exceptions become crew errors
(`ollama_errors`), model names, and the `/api/ps` answer.

It imports neither `ollama` nor `httpx`: together they take ~0.3 s to import on a small machine,
and `crew ps` needs only one GET, which `running_on` makes with the standard library. The seam
still knows their exceptions: it looks their classes up among the imported modules, since none
of them can be raised before its package is imported.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from datetime import datetime
from types import TracebackType
from typing import Any

from crew.backends.base import Resident
from crew.errors import (
    AnswerFailed,
    BackendError,
    CrewError,
    ModelCapabilityError,
    ModelNotPulled,
    OllamaOutOfMemory,
    OllamaUnreachable,
    RequestTimeout,
    StreamInterrupted,
)

METADATA_TIMEOUT_S = 30.0


def normalize_model(name: str) -> str:
    """Ollama's canonical name: `qwen3` is `qwen3:latest`."""
    name = name.strip()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _loaded(module: str, *names: str) -> tuple[type[BaseException], ...]:
    """These exception classes of `module`, if it is imported (else none: `isinstance` is False)."""
    found = sys.modules.get(module)
    return tuple(getattr(found, name) for name in names) if found is not None else ()


def _response_error(exc: BaseException) -> tuple[int, str] | None:
    """Status and message of an error Ollama answered with, through any of the three clients."""
    if isinstance(exc, _loaded("ollama", "ResponseError")):
        return int(exc.status_code), str(exc.error)  # type: ignore[attr-defined]
    if isinstance(exc, _loaded("httpx", "HTTPStatusError")):
        response = exc.response  # type: ignore[attr-defined]
        return response.status_code, _error_text(response.text)
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code, _error_text(exc.read().decode("utf-8", "replace"))
    return None


def _error_text(body: str) -> str:
    # Ollama's error bodies are {"error": "..."}; anything else is shown as it came.
    try:
        return str(json.loads(body).get("error") or body)
    except (ValueError, AttributeError):
        return body.strip()


def translate(exc: BaseException, host: str, model: str | None = None) -> CrewError:
    """The crew error for a foreign exception raised while talking to Ollama."""
    what = f" ({model})" if model else ""
    if isinstance(exc, CrewError):
        return exc
    answered = _response_error(exc)
    if answered is not None:
        return _refusal(*answered, host, model)
    if isinstance(exc, urllib.error.URLError):  # the reason is the socket's error
        reason = exc.reason
        exc = reason if isinstance(reason, BaseException) else ConnectionError(str(reason))
    if isinstance(exc, (ConnectionError, socket.gaierror, *_loaded("httpx", "ConnectError"))):
        return OllamaUnreachable(host)
    if isinstance(exc, (TimeoutError, *_loaded("httpx", "TimeoutException"))):
        return RequestTimeout(
            f"Ollama did not answer in time{what}: raise the role's timeout_s "
            "(e.g. CREW_CODER_TIMEOUT_S), or check the Ollama server log"
        )
    if isinstance(exc, _loaded("httpx", "RemoteProtocolError", "ReadError", "WriteError")):
        return StreamInterrupted(
            f"Ollama at {host} closed the connection mid-request{what}: it may have crashed or "
            "restarted; check `ollama ps` and run again"
        )
    if isinstance(exc, (OSError, *_loaded("httpx", "HTTPError"))):
        return BackendError(f"talking to Ollama at {host} failed{what}: {exc}")
    raise exc


def _refusal(status: int, text: str, host: str, model: str | None) -> CrewError:
    what = f" ({model})" if model else ""
    if "not found" in text and "model" in text or status == 404 and model:
        return ModelNotPulled(model or text, host)
    if status == 404:
        return BackendError(
            f"{host} has no Ollama API ({text}): set CREW_OLLAMA_HOST to the server's root "
            "URL, such as http://127.0.0.1:11434 (without /v1)"
        )
    if "does not support" in text:
        return ModelCapabilityError(
            f"Ollama refused a request{what}: {text}; turn the option off for that role "
            "(e.g. CREW_REVIEWER_THINK=false)"
        )
    if "memory" in text:
        return OllamaOutOfMemory(
            f"Ollama ran out of memory{what}: {text}; lower the role's num_ctx or "
            "CREW_MEMORY_BUDGET_GB, or close other programs"
        )
    if status == 503:
        return BackendError(f"Ollama is busy{what} (queue full): retry, or raise OLLAMA_MAX_QUEUE")
    if status <= 0:  # an {"error": ...} line in a stream that had begun with 200
        return AnswerFailed(f"Ollama answered with an error{what} (mid-answer): {text}")
    return BackendError(f"Ollama answered with an error{what} (HTTP {status}): {text}")


def _foreign(exc: BaseException) -> bool:
    return isinstance(exc, (OSError, *_loaded("httpx", "HTTPError"))) or _response_error(exc) is not None


class ollama_errors:  # noqa: N801 - used like a function: `async with ollama_errors(host):`
    """Translate ollama/httpx/urllib exceptions raised inside into crew errors (`with` or
    `async with`)."""

    def __init__(self, host: str, model: str | None = None) -> None:
        self._host = host
        self._model = model

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is not None and _foreign(exc):
            raise translate(exc, self._host, self._model) from exc

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(kind, exc, tb)


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):  # already parsed by the official client
        return value
    # Go writes RFC 3339 with up to 9 fractional digits; Python 3.11 parses and truncates them.
    try:
        return datetime.fromisoformat(value) if isinstance(value, str) and value else None
    except ValueError:
        return None


def parse_running(data: Any, host: str) -> list[Resident]:
    """The residents in a `GET /api/ps` answer."""
    if not isinstance(data, Mapping) or not isinstance(data.get("models") or [], list):
        raise BackendError(f"{host} answered /api/ps with something other than Ollama's JSON: "
                           "is CREW_OLLAMA_HOST an Ollama server?")
    return [
        Resident(
            name=normalize_model(str(m.get("name") or m.get("model") or "")),
            size=int(m.get("size") or 0),
            size_vram=int(m.get("size_vram") or 0),
            context_length=int(m["context_length"]) if m.get("context_length") else None,
            expires_at=_parse_time(m.get("expires_at")),
            host=str(m["host"]) if m.get("host") else None,
        )
        for m in data.get("models") or ()
    ]


def decode(body: bytes | str, host: str, path: str) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        raise BackendError(f"{host} answered {path} with something other than JSON: "
                           "is CREW_OLLAMA_HOST an Ollama server?") from None


def running_on(host: str, timeout: float = METADATA_TIMEOUT_S) -> list[Resident]:
    """What is resident, read once with the standard library: all `crew ps` needs."""
    with ollama_errors(host), urllib.request.urlopen(f"{host}/api/ps", timeout=timeout) as answer:
        return parse_running(decode(answer.read(), host, "/api/ps"), host)
