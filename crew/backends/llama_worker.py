"""The program of an embedded model's worker process: one `Llama` object, answers over a pipe.

Run as `python -m crew.backends.llama_worker '<json load options>'` by `crew.backends.worker`.
It loads the model, says `{"ready": ..}` on stdout, then answers one request at a time, each a
JSON line on stdin: `{"op": "chat", "id": N, "args": {...}}` (the keyword arguments of
`create_chat_completion`) is answered by `{"id": N, "result": {...}, "cut": bool}` or
`{"id": N, "error": "...", "kind": "context" | "failed"}`; `{"op": "cancel", "id": N}` ends that
answer at its next token. A reader thread takes the lines, so a cancel arrives while the main
thread generates; stdin's end (crew gone, however it ended) ends the worker at once.

A crash of llama.cpp (an abort in its grammar code, SIGSEGV, SIGILL) ends this process only:
crew sees its pipe close and the signal, and says so. Anything the library prints goes to
stderr, which crew reads into its log; stdout carries the protocol alone (fd 1 is pointed at
stderr, the protocol keeps a copy). SIGINT is ignored: Ctrl-C at the terminal reaches the whole
process group, and it is crew's to decide how an answer is stopped.

This runs in its own interpreter: it imports llama_cpp and, of crew, only `crew.backends.base`.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import sys
import threading
from typing import IO, Any

from crew.backends.base import gguf_numbers, kv_bytes_per_token

# A request that is not JSON, or a cancel for an answer already given: ignored, never fatal.
_NOTHING = -1


def main(argv: list[str]) -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    proto = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # stray prints of the library must not corrupt the protocol
    options = json.loads(argv[0])
    try:
        llm = _load(options)
    except Exception as exc:  # noqa: BLE001 - a load failure is reported, not a traceback
        _say(proto, {"error": f"{type(exc).__name__}: {exc}"})
        return 1
    _say(proto, {"ready": True, "held": _held_bytes(llm), "n_ctx": int(llm.n_ctx())})
    requests: queue.Queue[dict[str, Any]] = queue.Queue()
    current = [_NOTHING]
    cancelled: set[Any] = set()
    cut = threading.Event()
    threading.Thread(target=_read, args=(requests, current, cancelled, cut), daemon=True).start()
    eos = int(llm.token_eos())
    while True:
        request = requests.get()
        ident = request.get("id", _NOTHING)
        # In this order, against _read's: a cancel that came before is in `cancelled`, one that
        # comes after sees `current` and sets `cut` after it was cleared.
        current[0] = ident
        cut.clear()
        if ident in cancelled:
            _say(proto, {"id": ident, "result": None, "cut": True})
        else:
            _say(proto, _answer(llm, request, cut, eos))
        current[0] = _NOTHING
        cancelled.discard(ident)


def _read(requests: queue.Queue[dict[str, Any]], current: list[Any], cancelled: set[Any],
          cut: threading.Event) -> None:
    for line in sys.stdin:
        try:
            message = json.loads(line)
        except ValueError:
            continue
        if not isinstance(message, dict):
            continue
        if message.get("op") == "cancel":
            cancelled.add(message.get("id"))
            if message.get("id") == current[0]:
                cut.set()
        elif message.get("op") == "chat":
            requests.put(message)
    os._exit(0)  # crew closed the pipe: nobody is left to answer


def _answer(llm: Any, request: dict[str, Any], cut: threading.Event, eos: int) -> dict[str, Any]:
    from llama_cpp import LogitsProcessorList

    def stop_when_cut(input_ids: Any, scores: Any) -> Any:
        # Called before every token, from C (an exception would be swallowed): a cut answer is
        # ended by allowing only end-of-sequence.
        if cut.is_set():
            scores[:] = -float("inf")
            scores[eos] = 0.0
        return scores

    ident = request.get("id")
    args = dict(request.get("args") or {})
    args["logits_processor"] = LogitsProcessorList([stop_when_cut])
    try:
        result = llm.create_chat_completion(**args)
    except ValueError as exc:
        kind = "context" if "context window" in str(exc) else "failed"
        return {"id": ident, "error": str(exc), "kind": kind}
    except Exception as exc:  # noqa: BLE001 - llama.cpp's own failures, said in one line
        return {"id": ident, "error": f"{type(exc).__name__}: {exc}", "kind": "failed"}
    return {"id": ident, "result": result, "cut": cut.is_set()}


def _load(options: dict[str, Any]) -> Any:
    import llama_cpp

    def to_stderr(level: int, text: bytes, user_data: Any) -> None:
        sys.stderr.write(text.decode("utf-8", "replace"))

    global _LOG_CALLBACK
    # Held in a global: ctypes must not collect a callback that C still calls.
    _LOG_CALLBACK = llama_cpp.llama_log_callback(to_stderr)
    llama_cpp.llama_log_set(_LOG_CALLBACK, None)
    seed = options.get("seed")
    return llama_cpp.Llama(
        model_path=options["path"], n_ctx=int(options["n_ctx"]),
        n_threads=int(options.get("threads") or os.cpu_count() or 1),
        seed=int(seed) if seed is not None else 0xFFFFFFFF, verbose=False,
        chat_format="chatml-function-calling",
    )


_LOG_CALLBACK: Any = None


def _held_bytes(llm: Any) -> int:
    """What llama.cpp holds: its tensors as the library reports them, plus the f16 KV cache it
    allocated for the context (the model's shape times n_ctx)."""
    import llama_cpp

    weights = int(llama_cpp.llama_model_size(llm.model))
    metadata = gguf_numbers(dict(llm.metadata))
    return weights + kv_bytes_per_token(metadata) * int(llm.n_ctx())



def _say(proto: IO[str], message: dict[str, Any]) -> None:
    proto.write(json.dumps(message) + "\n")
    proto.flush()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
