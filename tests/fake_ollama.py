"""A fake Ollama: a real HTTP server on loopback that speaks Ollama's JSON and schedules like it.

It keeps its own memory capacity and its own scheduler, faithful to ../shared/notes/ollama-facts.md:
loads take time proportional to size (scaled down), one at a time, while a request for a model
already loaded is served at once (sched.go's fast path); an unload returns at once and frees
memory only once running requests end, a runner-option change (num_ctx, ...) reloads, a load
that does not fit evicts an idle runner by shortest keep_alive then model path (the blob's
digest: `FakeModel.digest`, sha256 of the name unless a test sets it; not LRU), and a request
without num_ctx gets the VRAM-dependent default. It records what happened so tests can assert on the
server's view, not on what crew says about itself.

Replies are scripted per model with `FakeReply`; an unscripted chat answers "OK".
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

GB = 1_000_000_000
GIB = 1 << 30
FOREVER = datetime(2318, 1, 1, tzinfo=UTC)
RUNNER_OPTIONS = ("num_ctx", "num_batch", "num_gpu", "use_mmap", "num_thread", "main_gpu")
DEFAULT_KEEP_ALIVE_S = 300.0


@dataclass
class FakeModel:
    """A pulled model: its file and the GGUF metadata /api/show reports."""

    name: str
    file_size: int
    architecture: str = "qwen3"
    family: str = "qwen3"
    parameter_size: str = "14.8B"
    quantization: str = "Q4_K_M"
    context_length: int = 40960
    block_count: int = 40
    head_count: int = 40
    head_count_kv: int = 8
    key_length: int = 128
    embedding_length: int = 5120
    full_attention_interval: int | None = None
    capabilities: list[str] = field(default_factory=lambda: ["completion", "tools", "thinking"])
    overhead: float = 0.03
    """Compute buffers on top of weights + KV cache, as a share of them."""
    blob: str | None = None
    """The blob digest (64 hex digits); Ollama's victim order between equal keep_alives follows
    it. By default sha256 of the name: fixed, but arbitrary, as a real digest is."""

    def kv_per_token(self) -> int:
        layers = self.block_count // (self.full_attention_interval or 1)
        return 2 * layers * self.head_count_kv * self.key_length * 2

    def resident_size(self, num_ctx: int) -> int:
        return int((self.file_size + self.kv_per_token() * num_ctx) * (1 + self.overhead))

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.parameter_size,
            "quantization_level": self.quantization,
        }

    def digest(self) -> str:
        return self.blob or hashlib.sha256(self.name.encode()).hexdigest()


def default_catalog() -> list[FakeModel]:
    """The three models of crew's default catalog, with their real shapes."""
    return [
        FakeModel(
            "qwen3-coder-next:q4_K_M", 52 * GB, architecture="qwen3next", family="qwen3next",
            parameter_size="79.7B", context_length=262144, block_count=48, head_count=16,
            head_count_kv=2, key_length=256, embedding_length=2048, full_attention_interval=4,
            capabilities=["completion", "tools"],
        ),
        FakeModel(
            "qwen3-coder:30b", int(18.6 * GB), architecture="qwen3moe", family="qwen3moe",
            parameter_size="30.5B", context_length=262144, block_count=48, head_count=32,
            head_count_kv=4, key_length=128, embedding_length=2048,
            capabilities=["completion", "tools", "insert"],
        ),
        FakeModel("qwen3:14b", int(9.3 * GB)),
    ]


@dataclass
class FakeReply:
    """One scripted answer to a chat request."""

    content: str = "OK"
    thinking: str = ""
    tool_calls: list[dict[str, Any]] | None = None
    """[{"name": ..., "arguments": {...}}]."""
    chunks: int | None = None
    """Stream the content in this many pieces (default: one per word)."""
    cut_after: int | None = None
    """Streaming: drop the connection after this many chunks."""
    error_after: int | None = None
    """Streaming: send an {"error": ...} line after this many chunks."""
    error: str = "an error was encountered while running the model"
    gate: threading.Event | None = None
    """Generation waits until this is set (to keep a request in flight)."""
    gate_after: int | None = None
    """Streaming: wait for `gate` after this many chunks instead of before the first."""
    done_reason: str = "stop"
    no_done: bool = False
    """Streaming: end the stream cleanly but without the final `done` line."""


@dataclass
class _Runner:
    model: FakeModel
    options: dict[str, Any]
    size: int
    size_vram: int
    keep_alive: float
    loaded_at: float
    refs: int = 0
    expiring: bool = False
    idle_since: float = field(default_factory=time.time)
    """Ollama fixes expires_at when a runner goes idle; /api/ps reports it, not now + keep_alive."""

    @property
    def num_ctx(self) -> int:
        return int(self.options["num_ctx"])


class _Http(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the default backlog of 5 drops connections under 50 clients
    allow_reuse_address = True

    def __init__(self, fake: FakeOllama, port: int = 0) -> None:
        self.fake = fake
        self.sockets: set[socket.socket] = set()
        super().__init__(("127.0.0.1", port), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        self.sockets.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        self.sockets.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that closes a kept-alive connection (or cuts a load it no longer wants) is
        # ordinary, as for Ollama; socketserver would print a traceback into the test's stderr.
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class FakeOllama:
    """The server and its records."""

    def __init__(self, port: int = 0) -> None:
        self._http = _Http(self, port)
        # A short poll: shutdown() waits for it, at the end of every test that uses the fake.
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._cond = threading.Condition()
        self._load_lock = threading.Lock()
        self.reset()

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeOllama:
        self._thread.start()
        return self

    def stop(self) -> None:
        """The process is gone: nothing listens, and open connections drop."""
        self._http.shutdown()
        self._http.server_close()
        self._drop_connections()

    def reset(
        self,
        models: list[FakeModel] | None = None,
        *,
        capacity: int = 48 * GB,
        system_memory: int | None = None,
        load_seconds_per_gb: float = 0.0005,
        unload_delay: float = 0.002,
        version: str = "0.13.0",
    ) -> None:
        """Forget everything: new catalog, capacity and records."""
        with self._cond:
            self.models = {m.name: m for m in (default_catalog() if models is None else models)}
            self.capacity = capacity
            self.system_memory = system_memory if system_memory is not None else capacity * 3 // 2
            self.load_seconds_per_gb = load_seconds_per_gb
            self.unload_delay = unload_delay
            self.version = version
            self.scripts: dict[str, deque[FakeReply]] = {}
            self.runners: dict[str, _Runner] = {}
            self.loading = 0
            self.requests: list[dict[str, Any]] = []
            self.chats: list[dict[str, Any]] = []
            self.loads: list[dict[str, Any]] = []
            self.unloads: list[dict[str, Any]] = []
            self.peak_used = 0
            self.waited_for_unload = 0
            self.fast_path = 0
            self.load_started = threading.Event()
            """Set when a load begins (after its room is made)."""
            """Requests served by a loaded runner without waiting for the scheduler."""
            self.load_gate: threading.Event | None = None
            self.generate_seconds: dict[str, float] = {}
            """Benchmarks: how long an answer of each model takes (holding its runner, as real
            generation does). Tests leave it empty: no timed tests."""
            self.epoch = getattr(self, "epoch", 0) + 1
            """Which test's records these are: a request left over from an earlier test (still in
            a handler thread) must not signal this one's events."""
            self.generating = threading.Event()
            self.streaming = threading.Event()
            """Set when a stream reaches its `gate_after` chunk."""
            self._cond.notify_all()

    def restart(self) -> None:
        """Ollama restarted: every runner is gone and open connections drop."""
        with self._cond:
            for name, runner in self.runners.items():
                self.unloads.append({"model": name, "reason": "restart", "size": runner.size})
            self.runners.clear()
            self._cond.notify_all()
        self._drop_connections()

    def _drop_connections(self) -> None:
        for sock in list(self._http.sockets):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    # -- test controls and records ------------------------------------------------------

    def script(self, model: str, *replies: FakeReply | str) -> None:
        queue = self.scripts.setdefault(model, deque())
        for reply in replies:
            queue.append(FakeReply(content=reply) if isinstance(reply, str) else reply)

    def resident(self) -> dict[str, int]:
        with self._cond:
            return {name: r.size for name, r in self.runners.items()}

    def expire(self, model: str) -> None:
        """Someone else unloaded the model (or its keep_alive ran out)."""
        with self._cond:
            runner = self.runners.pop(model)
            self.unloads.append({"model": model, "reason": "expired", "size": runner.size})
            self._cond.notify_all()

    def preload(
        self, model: str, num_ctx: int | None = None, keep_alive: float = DEFAULT_KEEP_ALIVE_S
    ) -> None:
        """Someone else loaded a model (e.g. `ollama run`), with its own options."""
        fake = self.models[model]
        ctx = self._resolve_ctx(fake, num_ctx)
        with self._cond:
            size = fake.resident_size(ctx)
            self.runners[model] = _Runner(
                fake, {"num_ctx": ctx}, size, min(size, self.capacity), keep_alive, time.time(),
            )
            self._track_peak()

    def wait_gone(self, model: str, timeout: float = 30.0) -> bool:
        """Block until the model has left memory (a guard timeout, not a timing)."""
        with self._cond:
            return self._cond.wait_for(lambda: model not in self.runners, timeout)

    def self_evictions(self) -> list[dict[str, Any]]:
        """Runners the server had to evict on its own: crew lost control if any."""
        return [u for u in self.unloads if u["reason"] == "evicted"]

    def option_reloads(self) -> list[dict[str, Any]]:
        return [u for u in self.unloads if u["reason"] == "reload"]

    def load_names(self) -> list[str]:
        return [load["model"] for load in self.loads]

    # -- scheduling (under self._cond) ----------------------------------------------------

    def _used(self) -> int:
        return sum(r.size for r in self.runners.values()) + self.loading

    def _track_peak(self) -> None:
        self.peak_used = max(self.peak_used, self._used())

    def _resolve_ctx(self, model: FakeModel, num_ctx: int | None) -> int:
        if not num_ctx:
            # Ollama's default depends on VRAM when the request does not say.
            num_ctx = 262144 if self.capacity >= 47 * GIB else 32768 if self.capacity >= 23 * GIB else 4096
        return min(int(num_ctx), model.context_length)

    def _remove(self, name: str, reason: str) -> None:
        runner = self.runners.pop(name)
        self.unloads.append({"model": name, "reason": reason, "size": runner.size})
        self._cond.notify_all()

    def _finish_unload(self, name: str, runner: _Runner) -> None:
        # The runner process takes a moment to exit after its last request.
        def later() -> None:
            with self._cond:
                if self.runners.get(name) is runner:
                    self._remove(name, "keep_alive")

        if self.unload_delay > 0:
            timer = threading.Timer(self.unload_delay, later)
            timer.daemon = True
            timer.start()
        else:
            later()

    def acquire(self, fake: FakeModel, options: dict[str, Any], keep_alive: float | None) -> _Runner:
        """Make the model resident with these runner options and take a reference."""
        ctx = self._resolve_ctx(fake, options.get("num_ctx"))
        runner_options = {k: options[k] for k in RUNNER_OPTIONS if k in options}
        runner_options["num_ctx"] = ctx
        with self._cond:  # the fast path: a loaded runner serves at once, even while another loads
            runner = self.runners.get(fake.name)
            if runner is not None and not runner.expiring and runner.options == runner_options:
                runner.refs += 1
                if keep_alive is not None:
                    runner.keep_alive = keep_alive
                self.fast_path += 1
                return runner
        with self._load_lock:  # Ollama's scheduler loads one model at a time
            with self._cond:
                waited = False
                while True:
                    runner = self.runners.get(fake.name)
                    if runner is None:
                        break
                    if runner.expiring:  # a request for an unloading model waits, then reloads
                        if not waited:
                            self.waited_for_unload += 1
                            waited = True
                        self._cond.wait()
                        continue
                    if runner.options == runner_options:
                        runner.refs += 1
                        if keep_alive is not None:
                            runner.keep_alive = keep_alive
                        return runner
                    if runner.refs == 0:
                        self._remove(fake.name, "reload")
                        break
                    self._cond.wait()
                size = fake.resident_size(ctx)
                self._make_room(fake, size)
                size_vram = min(size, self.capacity)
                self.loading += size
                self._track_peak()
                self.load_started.set()
            time.sleep(size / GB * self.load_seconds_per_gb)
            if self.load_gate is not None:
                self.load_gate.wait()
            with self._cond:
                self.loading -= size
                runner = _Runner(
                    fake, runner_options, size, size_vram,
                    DEFAULT_KEEP_ALIVE_S if keep_alive is None else keep_alive, time.time(), refs=1,
                )
                self.runners[fake.name] = runner
                self.loads.append({"model": fake.name, "size": size, "options": runner_options})
                self._track_peak()
                self._cond.notify_all()
                return runner

    def _make_room(self, fake: FakeModel, size: int) -> None:
        waited = False
        while self._used() + size > self.capacity:
            if any(r.expiring for r in self.runners.values()):
                if not waited:
                    self.waited_for_unload += 1
                    waited = True
                self._cond.wait()
                continue
            idle = [(name, r) for name, r in self.runners.items() if r.refs == 0]
            if idle:
                # sched.go: by sessionDuration (keep_alive), then by model path (the blob digest).
                idle.sort(key=lambda item: (item[1].keep_alive if item[1].keep_alive >= 0
                                            else float("inf"), item[1].model.digest()))
                self._remove(idle[0][0], "evicted")
                continue
            if not self.runners and not self.loading:
                if size > self.system_memory:
                    raise _HttpError(500, (
                        f"model requires more system memory ({size / GIB:.1f} GiB) than is "
                        f"available ({self.system_memory / GIB:.1f} GiB)"
                    ))
                return  # alone and too large: split between GPU and CPU
            self._cond.wait()

    def expire_due(self) -> None:
        """Unload idle runners whose keep_alive ran out (Ollama does it with a timer; doing it
        before each request is the same to any client)."""
        with self._cond:
            now = time.time()
            for name, runner in list(self.runners.items()):
                if (runner.refs == 0 and not runner.expiring and runner.keep_alive >= 0
                        and runner.idle_since + runner.keep_alive <= now):
                    self._remove(name, "expired")

    def release(self, runner: _Runner) -> None:
        with self._cond:
            runner.refs -= 1
            runner.idle_since = time.time()
            if runner.expiring and runner.refs == 0:
                self._finish_unload(runner.model.name, runner)
            self._cond.notify_all()

    def unload(self, name: str) -> None:
        with self._cond:
            runner = self.runners.get(name)
            if runner is None or runner.expiring:
                return
            runner.expiring = True
            if runner.refs == 0:
                self._finish_unload(name, runner)

    def next_reply(self, model: str) -> FakeReply:
        with self._cond:
            queue = self.scripts.get(model)
            return queue.popleft() if queue else FakeReply()


class _HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


# Ollama is a Go server: times are RFC 3339 with up to 9 fractional digits (trailing zeros cut)
# in the server's local zone. The fake's zone is +02:00, so readers must not assume UTC.
_SERVER_ZONE = timezone(timedelta(hours=2))


def go_time(moment: datetime) -> str:
    local = moment.astimezone(_SERVER_ZONE)
    nanos = f"{local.microsecond:06d}417".rstrip("0")
    zone = local.strftime("%z")
    return local.strftime("%Y-%m-%dT%H:%M:%S") + (f".{nanos}" if nanos else "") + f"{zone[:3]}:{zone[3:]}"


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


_DURATION = re.compile(r"^(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)$")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_keep_alive(value: Any) -> float | None:
    """Ollama's rules: a number is seconds, a string needs a unit, negative is forever."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _HttpError(400, "invalid keep_alive")
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value).strip())
    if not match:
        raise _HttpError(400, f'time: missing unit in duration "{value}"')
    return float(match.group(1)) * _UNIT_S[match.group(2)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out separately; no 40 ms stalls
    server: _Http

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    @property
    def fake(self) -> FakeOllama:
        return self.server.fake

    # -- plumbing -----------------------------------------------------------------------

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str) -> None:
        self._send_json(status, {"error": message})

    def _signal(self, event: threading.Event) -> None:
        if self._epoch == self.fake.epoch:
            event.set()

    def _body(self) -> dict[str, Any]:
        self._epoch = self.fake.epoch
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else {}
        self.fake.requests.append({"method": self.command, "path": self.path, "body": body})
        return body if isinstance(body, dict) else {}

    def _model(self, body: dict[str, Any]) -> FakeModel:
        name = str(body.get("model") or body.get("name") or "")
        if name and ":" not in name.rsplit("/", 1)[-1]:
            name += ":latest"
        fake = self.fake.models.get(name)
        if fake is None:
            raise _HttpError(404, f"model '{name}' not found")
        return fake

    def do_GET(self) -> None:  # noqa: N802
        self.fake.expire_due()
        self.fake.requests.append({"method": "GET", "path": self.path, "body": None})
        try:
            if self.path == "/api/version":
                self._send_json(200, {"version": self.fake.version})
            elif self.path == "/api/tags":
                self._send_json(200, {"models": [self._tag(m) for m in self.fake.models.values()]})
            elif self.path == "/api/ps":
                self._send_json(200, {"models": self._ps()})
            elif self.path in ("/", ""):
                body = b"Ollama is running"
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            else:
                self._error(404, "404 page not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def do_POST(self) -> None:  # noqa: N802
        self.fake.expire_due()
        try:
            body = self._body()
            if self.path == "/api/show":
                self._send_json(200, self._show(self._model(body)))
            elif self.path in ("/api/chat", "/api/generate"):
                self._chat(body, generate=self.path == "/api/generate")
            elif self.path in ("/api/embed", "/api/embeddings"):
                self._embed(body, legacy=self.path == "/api/embeddings")
            else:
                self._error(404, "404 page not found")
        except _HttpError as exc:
            self._error(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- endpoints ----------------------------------------------------------------------

    def _tag(self, m: FakeModel) -> dict[str, Any]:
        return {
            "name": m.name, "model": m.name, "modified_at": "2026-11-01T10:00:00Z",
            "size": m.file_size, "digest": m.digest(), "details": m.details(),
        }

    def _ps(self) -> list[dict[str, Any]]:
        with self.fake._cond:
            out = []
            for name, r in sorted(self.fake.runners.items()):
                expires = FOREVER if r.keep_alive < 0 else (
                    datetime.fromtimestamp(r.idle_since + r.keep_alive, UTC)
                )
                out.append({
                    "name": name, "model": name, "size": r.size, "digest": r.model.digest(),
                    "details": r.model.details(),
                    "expires_at": go_time(expires),
                    "size_vram": r.size_vram, "context_length": r.num_ctx,
                })
            return out

    def _show(self, m: FakeModel) -> dict[str, Any]:
        arch = m.architecture
        info: dict[str, Any] = {
            "general.architecture": arch,
            "general.parameter_count": int(float(m.parameter_size.rstrip("B")) * 1e9),
            f"{arch}.context_length": m.context_length,
            f"{arch}.block_count": m.block_count,
            f"{arch}.embedding_length": m.embedding_length,
            f"{arch}.attention.head_count": m.head_count,
            f"{arch}.attention.head_count_kv": m.head_count_kv,
            f"{arch}.attention.key_length": m.key_length,
            f"{arch}.attention.value_length": m.key_length,
        }
        if m.full_attention_interval:
            info[f"{arch}.full_attention_interval"] = m.full_attention_interval
        return {
            "license": "Apache License 2.0",
            "modelfile": f"FROM {m.name}",
            "parameters": "temperature 0.7\ntop_p 0.8",
            "template": "{{ .Prompt }}",
            "details": m.details(),
            "model_info": info,
            "capabilities": list(m.capabilities),
            "modified_at": "2026-11-01T10:00:00Z",
        }

    def _chat(self, body: dict[str, Any], *, generate: bool) -> None:
        fake_model = self._model(body)
        name = fake_model.name
        keep_alive = parse_keep_alive(body.get("keep_alive"))
        messages = body.get("messages") or []
        empty = not body.get("prompt") if generate else not messages
        if body.get("think") is not None and "thinking" not in fake_model.capabilities:
            raise _HttpError(400, f'"{name}" does not support thinking')
        if body.get("tools") and "tools" not in fake_model.capabilities:
            raise _HttpError(400, f"registry.ollama.ai/library/{name} does not support tools")
        if empty and keep_alive == 0:
            self.fake.unload(name)
            self._send_json(200, self._done(name, "unload", generate))
            return
        options = dict(body.get("options") or {})
        self._record: dict[str, Any] = {}
        if not empty:
            self._record = {
                "model": name, "options": options, "think": body.get("think"),
                "tools": body.get("tools") or [], "keep_alive": body.get("keep_alive"),
                "messages": messages, "stream": body.get("stream", True),
            }
            self.fake.chats.append(self._record)
        started = time.monotonic()
        runner = self.fake.acquire(fake_model, options, keep_alive)
        self._num_ctx = runner.num_ctx
        try:
            load_ns = int((time.monotonic() - started) * 1e9)
            if empty:
                self._send_json(200, self._done(name, "load", generate))
                return
            reply = self.fake.next_reply(name)
            self._signal(self.fake.generating)
            if reply.gate is not None and reply.gate_after is None:
                reply.gate.wait()
            if self.fake.generate_seconds.get(name):
                time.sleep(self.fake.generate_seconds[name])
            prompt = [{"content": body.get("prompt", "")}] if generate else messages
            if body.get("stream", True):
                self._stream(name, reply, prompt, load_ns, generate)
            else:
                self._send_json(200, self._whole(name, reply, prompt, load_ns, generate))
        finally:
            self.fake.release(runner)

    def _embed(self, body: dict[str, Any], *, legacy: bool) -> None:
        fake_model = self._model(body)
        texts = [body.get("prompt", "")] if legacy else body.get("input", "")
        texts = [texts] if isinstance(texts, str) else list(texts)
        options = dict(body.get("options") or {})
        self.fake.chats.append({"model": fake_model.name, "options": options, "embed": texts,
                                "keep_alive": body.get("keep_alive"), "messages": [], "tools": []})
        runner = self.fake.acquire(fake_model, options, parse_keep_alive(body.get("keep_alive")))
        try:
            vectors = [[float(len(t)), float(sum(map(ord, t)) % 97), 1.0] for t in texts]
            if legacy:
                self._send_json(200, {"embedding": vectors[0]})
            else:
                self._send_json(200, {"model": fake_model.name, "embeddings": vectors,
                                      "total_duration": 1_000_000, "load_duration": 0,
                                      "prompt_eval_count": sum(len(t) // 4 + 1 for t in texts)})
        finally:
            self.fake.release(runner)

    def _done(self, name: str, reason: str, generate: bool) -> dict[str, Any]:
        if generate:
            return {"model": name, "created_at": _now(), "response": "", "done": True,
                    "done_reason": reason}
        return {"model": name, "created_at": _now(),
                "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": reason}

    def _stats(self, reply: FakeReply, messages: list[Any], load_ns: int) -> dict[str, Any]:
        prompt_tokens = max(1, sum(len(str(m.get("content", ""))) for m in messages) // 4)
        eval_tokens = max(1, len(_pieces(reply.content, reply.chunks)) + len(_pieces(reply.thinking, None)))
        # Ollama fits a prompt longer than num_ctx by dropping the oldest messages, silently.
        truncated = prompt_tokens > self._num_ctx
        prompt_tokens = min(prompt_tokens, self._num_ctx)
        self._record.update(prompt_eval_count=prompt_tokens, eval_count=eval_tokens, truncated=truncated)
        return {
            "total_duration": load_ns + 2_000_000, "load_duration": load_ns,
            "prompt_eval_count": prompt_tokens, "prompt_eval_duration": 1_000_000,
            "eval_count": eval_tokens, "eval_duration": 1_000_000,
        }

    def _tool_calls(self, reply: FakeReply) -> list[dict[str, Any]]:
        return [
            {"function": {"index": i, "name": call["name"], "arguments": call.get("arguments", {})}}
            for i, call in enumerate(reply.tool_calls or [])
        ]

    def _whole(
        self, name: str, reply: FakeReply, messages: list[Any], load_ns: int, generate: bool = False
    ) -> dict[str, Any]:
        if generate:
            return {"model": name, "created_at": _now(), "response": reply.content, "done": True,
                    "done_reason": reply.done_reason, **self._stats(reply, messages, load_ns)}
        message: dict[str, Any] = {"role": "assistant", "content": reply.content}
        if reply.thinking:
            message["thinking"] = reply.thinking
        if reply.tool_calls:
            message["tool_calls"] = self._tool_calls(reply)
        return {"model": name, "created_at": _now(), "message": message, "done": True,
                "done_reason": reply.done_reason, **self._stats(reply, messages, load_ns)}

    def _stream(
        self, name: str, reply: FakeReply, messages: list[Any], load_ns: int, generate: bool = False
    ) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines: list[dict[str, Any]] = []
        for piece in _pieces(reply.thinking, None):
            lines.append({"role": "assistant", "content": "", "thinking": piece})
        for piece in _pieces(reply.content, reply.chunks):
            lines.append({"role": "assistant", "content": piece})
        if reply.tool_calls:
            lines.append({"role": "assistant", "content": "", "tool_calls": self._tool_calls(reply)})
        for sent, message in enumerate(lines):
            if reply.gate is not None and reply.gate_after == sent:
                self._signal(self.fake.streaming)
                reply.gate.wait()
            if reply.cut_after is not None and sent >= reply.cut_after:
                self._cut()
                return
            if reply.error_after is not None and sent >= reply.error_after:
                self._chunk({"error": reply.error})
                self._end()
                return
            if generate:
                self._chunk({"model": name, "created_at": _now(), "response": message["content"],
                             "done": False})
            else:
                self._chunk({"model": name, "created_at": _now(), "message": message, "done": False})
        if reply.no_done:
            self._end()
            return
        last = {"response": ""} if generate else {"message": {"role": "assistant", "content": ""}}
        self._chunk({
            "model": name, "created_at": _now(), **last,
            "done": True, "done_reason": reply.done_reason, **self._stats(reply, messages, load_ns),
        })
        self._end()

    def _chunk(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _cut(self) -> None:
        self.wfile.flush()
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _pieces(text: str, count: int | None) -> list[str]:
    if not text:
        return []
    if count is None:
        return re.findall(r"\S+\s*|\s+", text)
    size = max(1, -(-len(text) // count))
    return [text[i:i + size] for i in range(0, len(text), size)]
