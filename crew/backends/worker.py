"""One embedded model's worker process, as crew sees it: start, ask, cut, stop, and its death.

The worker (`crew.backends.llama_worker`) owns the `Llama` object; this side speaks to it over
its stdin and stdout, JSON lines. Why a process: a crash of llama.cpp (an abort in its grammar
code twenty turns into a run, SIGSEGV, SIGILL from a native build) ends the worker, not crew.
Its stdout closing is seen at once; the signal and the library's last line become one
`ModelCrashed` naming them and what was asked, and the next request starts a new worker.
Everything the library prints (its log, ggml's abort message) goes to the `crew.llama` logger,
never to the terminal; ggml's gdb backtrace is turned off (`GGML_NO_BACKTRACE`).

An answer is cut by telling the worker (it ends the answer at its next token); if it has not
ended within `CUT_GRACE_S` (a long prompt still being read, a hung library), the worker is
killed and started again on the next request. Either way the caller gets its answer back
marked `cut` well within a second.

Why not llama-cpp-python's own OpenAI server (its `server` extra): measured on SmolLM2, 2 cores
(bench/embedded_worker.py, median of 3), this worker is ready in 0.34 s against 0.62 s and
answers 20 tokens in 0.43 s against 0.49 s; the server stops an answer only when a streamed
request's connection closes (0.12 s; the worker 0.23 s), so crew would need a streaming OpenAI
client and tool-call parsing it does not have, two more dependencies, and a port.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import signal
import sys
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from crew.errors import BackendError, ContextOverflow, ModelCrashed
from crew.safe_text import one_line

log = logging.getLogger("crew.llama")

WORKER_PROGRAM: Sequence[str] = (sys.executable, "-m", "crew.backends.llama_worker")
"""The worker's command line, before its load options (tests start a fake one instead)."""
# How long a cut answer may take to end by itself before the worker is killed.
CUT_GRACE_S = 0.5
# How long a stopped worker may take to exit once its stdin is closed, before it is killed.
STOP_GRACE_S = 2.0
# How long to wait for the library's last words on stderr once the worker is dead (a child of
# the worker could keep the pipe open).
LAST_WORDS_S = 1.0
# A JSON line can hold a whole conversation.
LINE_LIMIT = 64 * 1024 * 1024
# Lines of the library's stderr kept for the message about a crash.
KEPT_LINES = 40
PORTABLE_BUILD = (
    'CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON" '
    "pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python"
)


@dataclass(frozen=True)
class Answer:
    """What the worker answered: llama-cpp-python's chat completion, or nothing if it was cut
    before it produced one."""

    result: Mapping[str, Any] | None
    cut: bool


class ModelWorker:
    """The worker process of one model: started by `start()`, ended by `stop()`."""

    def __init__(self, model: str, options: Mapping[str, Any], *,
                 program: Sequence[str] | None = None) -> None:
        self.model = model
        self._options = dict(options)
        self._program = list(program if program is not None else WORKER_PROGRAM)
        self._process: asyncio.subprocess.Process | None = None
        self._pumps: list[asyncio.Task[None]] = []
        self._pending: dict[int, asyncio.Future[Answer]] = {}
        self._next_id = 0
        self._current: tuple[int, object] | None = None
        self._turn = asyncio.Lock()
        self._killed: set[int] = set()
        """Pids crew killed on purpose (a cut): their death is not a crash."""
        self._stderr: deque[str] = deque(maxlen=KEPT_LINES)
        self.held = 0
        """Bytes llama.cpp reports it holds (tensors and KV cache)."""
        self.rss = 0
        """The worker's resident memory once loaded, measured from the process."""

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self) -> None:
        """Start the worker and wait until its model is loaded; ModelCrashed if it dies first,
        BackendError if it cannot load the model."""
        self._stderr.clear()
        env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
        process = await asyncio.create_subprocess_exec(
            *self._program, json.dumps(self._options), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
            limit=LINE_LIMIT,
        )
        self._process = process
        assert process.stdout is not None and process.stderr is not None
        stderr = asyncio.ensure_future(self._log(process.stderr))
        try:
            line = await process.stdout.readline()
        except BaseException:
            await self._end(process)
            raise
        hello = _parse(line)
        if hello is None or not hello.get("ready"):
            died = await self._death(process, stderr)
            if hello is not None and hello.get("error"):
                raise BackendError(f"the embedded backend cannot load {self.model}: "
                                   f"{one_line(str(hello['error']))[:300]}")
            raise ModelCrashed(self._crash_line(died, "while it loaded"), signal_name=died)
        self.held = int(hello.get("held") or 0)
        self.rss = _rss(process.pid)
        self._pumps = [stderr, asyncio.ensure_future(self._read(process, stderr))]

    async def chat(self, args: Mapping[str, Any], *, asked: str, owner: object,
                   wanted: Callable[[], bool] = lambda: True) -> Answer:
        """The worker's answer to one chat request. `asked` says what was asked, for the message
        if the worker dies; `owner` is who may `cut` it; `wanted` is asked just before the
        request is sent (a cut that came before has nothing to cut yet). A cancelled call cuts
        the answer first."""
        async with self._turn:
            if not self.alive:
                await self._restart()
            if not wanted():
                return Answer(None, cut=True)
            process = self._process
            assert process is not None and process.stdin is not None
            self._next_id += 1
            ident = self._next_id
            answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
            self._pending[ident] = answer
            self._current = (ident, owner)
            self._asked = asked
            try:
                process.stdin.write((json.dumps({"op": "chat", "id": ident, "args": dict(args)}) + "\n")
                                    .encode())
                await process.stdin.drain()
                return await asyncio.shield(answer)
            except (BrokenPipeError, ConnectionResetError):
                return await asyncio.shield(answer)  # the reader says how it died
            except asyncio.CancelledError:
                await self._cut(ident)
                raise
            finally:
                self._current = None
                self._pending.pop(ident, None)

    async def cut(self, owner: object) -> None:
        """End the answer `owner` is waiting for, if there is one (within about a second)."""
        current = self._current
        if current is not None and current[1] is owner:
            await self._cut(current[0])

    async def stop(self) -> None:
        """End the worker: its stdin closed, killed if it does not exit in STOP_GRACE_S."""
        process, self._process = self._process, None
        if process is not None:
            await self._end(process)
        for pump in self._pumps:
            pump.cancel()
        await asyncio.gather(*self._pumps, return_exceptions=True)
        self._pumps = []

    # -- inside ----------------------------------------------------------------------------

    async def _restart(self) -> None:
        log.info("starting the worker of %s again", self.model)
        await self.stop()
        await self.start()

    async def _cut(self, ident: int) -> None:
        process = self._process
        answer = self._pending.get(ident)
        if process is None or answer is None or answer.done():
            return
        try:
            assert process.stdin is not None
            process.stdin.write((json.dumps({"op": "cancel", "id": ident}) + "\n").encode())
            await asyncio.wait_for(asyncio.shield(answer), CUT_GRACE_S)
            return
        except (TimeoutError, OSError, BackendError):
            pass
        if not answer.done():  # not ended at a token: the library is busy elsewhere (or hung)
            log.info("the answer of %s did not end when cut: killing its worker", self.model)
            self._killed.add(process.pid)
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            with contextlib.suppress(TimeoutError, BackendError):
                await asyncio.wait_for(asyncio.shield(answer), STOP_GRACE_S)

    async def _read(self, process: asyncio.subprocess.Process, stderr: asyncio.Task[None]) -> None:
        """Hand each answer to its caller; when stdout ends, fail what is still waiting."""
        assert process.stdout is not None
        while line := await process.stdout.readline():
            message = _parse(line)
            if message is None:
                continue
            answer = self._pending.get(int(message.get("id") or 0))
            if answer is None or answer.done():
                continue  # the answer to a call that was cancelled
            if "error" in message:
                answer.set_exception(_failure(self.model, message))
            else:
                answer.set_result(Answer(message.get("result"), bool(message.get("cut"))))
        died = await self._death(process, stderr)
        for answer in self._pending.values():
            if answer.done():
                continue
            if process.pid in self._killed:
                answer.set_result(Answer(None, cut=True))
            else:
                answer.set_exception(ModelCrashed(self._crash_line(died, f"while answering {self._asked}"),
                                                  signal_name=died))

    async def _log(self, stderr: asyncio.StreamReader) -> None:
        while line := await stderr.readline():
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                self._stderr.append(text)
                log.debug("%s", text)

    async def _death(self, process: asyncio.subprocess.Process, stderr: asyncio.Task[None]) -> str:
        """How the worker ended ("SIGABRT", "exit 1"), once its last words are read."""
        code = await process.wait()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(stderr), LAST_WORDS_S)
        if code < 0:
            try:
                return signal.Signals(-code).name
            except ValueError:
                return f"signal {-code}"
        return f"exit {code}"

    def _crash_line(self, died: str, when: str) -> str:
        last = _last_words(self._stderr)
        said = f": {last}" if last else ""
        return f"the embedded model {self.model} crashed ({died}{said}) {when}; {_fix(died)}"

    async def _end(self, process: asyncio.subprocess.Process) -> None:
        if process.returncode is None and process.stdin is not None:
            process.stdin.close()  # the worker leaves when its stdin ends
            try:
                await asyncio.wait_for(process.wait(), STOP_GRACE_S)
            except TimeoutError:
                self._killed.add(process.pid)
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
        await process.wait()

    _asked = "a request"


def _parse(line: bytes) -> dict[str, Any] | None:
    try:
        message = json.loads(line)
    except ValueError:
        return None
    return message if isinstance(message, dict) else None


def _failure(model: str, message: Mapping[str, Any]) -> BackendError:
    text = one_line(str(message.get("error")))[:500]
    if message.get("kind") == "context":
        return ContextOverflow(text)
    return BackendError(f"the embedded model failed ({model}): {text}")


def _last_words(lines: Sequence[str]) -> str:
    """The library's last line that says what went wrong (ggml's `fatal error`, a C++ `what()`),
    escaped and short enough for one line; empty if it said nothing of the kind (killed)."""
    wanted = ("error", "what()", "abort", "assert", "fault", "illegal")
    chosen = next((line for line in reversed(lines) if any(w in line.lower() for w in wanted)), "")
    # The folders of the library's source say nothing to the person; its file and line do.
    return one_line(_SOURCE_FOLDERS.sub("", chosen.strip()))[:160]


_SOURCE_FOLDERS = re.compile(r"\S*/(?=[^/\s]+:\d+)")


def _fix(died: str) -> str:
    if died == "SIGILL":
        return ("an instruction this CPU (or its hypervisor) does not allow: a native build of "
                f"llama.cpp; rebuild it portably: {PORTABLE_BUILD}, or use Ollama (--backend ollama)")
    return "a crash of llama.cpp; run again, or use Ollama (--backend ollama)"


def _rss(pid: int) -> int:
    import psutil

    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return 0

