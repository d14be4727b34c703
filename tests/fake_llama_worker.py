"""A fake embedded-model worker: speaks crew.backends.llama_worker's protocol with no llama.cpp.

    python tests/fake_llama_worker.py PLAN '<load options>'

PLAN is a folder. `plan.json` in it is a list of what to do with each chat request, taken in
order and shared by every worker started on that folder (a worker started again goes on where the
last stopped). `requests.jsonl` records each request's arguments, `answering` (written when an
answer starts) holds the worker's pid. What a step may be:

- `"answer TEXT"`: answer TEXT.
- `"abort"`: say what ggml says when its grammar code fails (with a terminal escape in it) and
  die of SIGABRT, as llama.cpp does.
- `"hang"`: start an answer and never end it, cancel or not (only a kill stops it).
- `"until-cut"`: an answer that ends only when it is cancelled (then cut).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as the real worker does
    plan = Path(sys.argv[1])
    proto = sys.stdout
    proto.write(json.dumps({"ready": True, "held": 1000, "n_ctx": 2048}) + "\n")
    proto.flush()
    cut = threading.Event()
    lines: list[dict[str, object]] = []
    arrived = threading.Condition()

    def read() -> None:
        for line in sys.stdin:
            message = json.loads(line)
            if message.get("op") == "cancel":
                cut.set()
            else:
                with arrived:
                    lines.append(message)
                    arrived.notify()
        os._exit(0)

    threading.Thread(target=read, daemon=True).start()
    while True:
        with arrived:
            while not lines:
                arrived.wait()
            request = lines.pop(0)
        cut.clear()
        with (plan / "requests.jsonl").open("a") as log:
            log.write(json.dumps(request["args"]) + "\n")
        steps = json.loads((plan / "plan.json").read_text())
        step = steps.pop(0) if steps else "answer done"
        (plan / "plan.json").write_text(json.dumps(steps))
        if step == "abort":
            sys.stderr.write("some log line\n/build/vendor/llama.cpp/src/llama-grammar.cpp:1455: "
                             "fatal error \x1b]52;c;aGk=\x07\n")
            sys.stderr.flush()
            os.abort()
        if step in ("hang", "until-cut"):
            (plan / "answering").write_text(str(os.getpid()))
            if step == "hang":
                threading.Event().wait()  # until killed
            cut.wait()
            proto.write(json.dumps({"id": request["id"], "result": _result(""), "cut": True}) + "\n")
        else:
            proto.write(json.dumps({"id": request["id"], "result": _result(step.removeprefix("answer "))})
                        + "\n")
        proto.flush()


def _result(text: str) -> dict[str, object]:
    return {"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3}}


if __name__ == "__main__":
    main()
