"""How a command ends: the one table from error to exit code, and the runner that turns SIGTERM
and SIGHUP into the same clean stop as Ctrl-C."""

from __future__ import annotations

import os
from collections.abc import Coroutine
from typing import Any, TypeVar

from crew.errors import BackendError, BudgetError, CrewError, InputError, SettingsError, WorkspaceError
from crew.terminal.renderers import Renderer

EXIT_OK = 0


EXIT_NOT_APPROVED = 1


EXIT_ERROR = 2


EXIT_INTERRUPTED = 130


# The one table from error to exit code; the most specific class listed first wins.
EXIT_CODES: list[tuple[type[BaseException], int]] = [
    (SettingsError, EXIT_ERROR),
    (InputError, EXIT_ERROR),
    (BackendError, EXIT_ERROR),
    (BudgetError, EXIT_ERROR),
    (WorkspaceError, EXIT_ERROR),
    (CrewError, EXIT_ERROR),
    (KeyboardInterrupt, EXIT_INTERRUPTED),
]


def exit_code(exc: BaseException) -> int:
    if isinstance(exc, Terminated):
        return 128 + exc.signum  # 143 for SIGTERM, 129 for SIGHUP, as a shell reports them
    return next((code for cls, code in EXIT_CODES if isinstance(exc, cls)), EXIT_ERROR)


T = TypeVar("T")


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP: handled as Ctrl-C is (cut, save, hand back), with its own exit code."""

    def __init__(self, signum: int) -> None:
        import signal

        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def arun(coroutine: Coroutine[Any, Any, T]) -> T:
    # asyncio costs ~50 ms to import here, and `crew --help` has no use for it.
    import asyncio
    import signal

    received: list[int] = []
    signals = [s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGHUP", None)) if s]

    async def guarded() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop(signum: int) -> None:
            if received:  # a second signal while crew cleans up: stop at once
                os._exit(128 + signum)
            received.append(signum)
            task.cancel()  # as asyncio.run does for Ctrl-C: the command's own cleanup runs

        for signum in signals:
            loop.add_signal_handler(signum, stop, signum)
        try:
            return await coroutine
        finally:
            for signum in signals:
                loop.remove_signal_handler(signum)

    try:
        return asyncio.run(guarded())
    except asyncio.CancelledError:
        if received:
            raise Terminated(received[0]) from None
        raise


def arun_rendered(renderer: Renderer, coroutine: Coroutine[Any, Any, T]) -> T:
    """`arun`, with the renderer's live area gone (and the cursor back) before anything else prints."""
    try:
        return arun(coroutine)
    finally:
        renderer.close()
