"""The solution's process in grading: it imports the graded modules and answers the tests' calls.

Run as `python -I -B -u -c ... LIB FD SOLUTION_DIR` in a sandbox of its own (see grading.py),
with one end of a socket pair on FD. Each request (see wire.py) names an operation on an object
it handed out earlier by number (a handle): import a module, get, set or delete an attribute,
call, or one of the operators in `_OPERATORS`. It answers with the result, or with the exception
raised. A function the tests pass in (a callback) arrives as a `TestsFunction`: calling it sends
a `callback` message and serves the tests' requests until its `return` (or `raise`) comes back.

Results are sent as plain data where they are plain: a subclass of a plain type (an `IntEnum`, a
`Counter`, a named tuple) is sent as its value by the base type's own methods, so what the tests
compare is the value, never a method of the solution's. Everything else is a handle; an
exception class is described with its bases, so the tests can catch it by its name and as the
builtin exception it derives from.

Nothing here is a defence: this process runs the attacker's code, which can replace any of it.
The defences are on the other side (remote.py) and in the sandboxes.
"""

from __future__ import annotations

import builtins
import importlib
import operator
import socket
import sys
from collections.abc import Callable
from typing import Any

from . import wire

# What a `with` block of the tests' that raised tells the solution's __exit__ (the tests' own
# exception stays in their process).
_EXIT: dict[bool, tuple[Any, Any, Any]] = {
    False: (None, None, None), True: (RuntimeError, RuntimeError("the tests' block raised"), None)}
_OPERATORS: dict[str, Callable[..., Any]] = {
    "eq": operator.eq, "ne": operator.ne, "lt": operator.lt, "le": operator.le, "gt": operator.gt,
    "ge": operator.ge, "add": operator.add, "sub": operator.sub, "mul": operator.mul,
    "truediv": operator.truediv, "floordiv": operator.floordiv, "mod": operator.mod, "pow": operator.pow,
    "matmul": operator.matmul, "and": operator.and_, "or": operator.or_, "xor": operator.xor,
    "lshift": operator.lshift, "rshift": operator.rshift, "neg": operator.neg, "pos": operator.pos,
    "abs": abs, "invert": operator.invert, "len": len, "bool": bool, "iter": iter, "next": next,
    "getitem": operator.getitem, "setitem": operator.setitem, "delitem": operator.delitem,
    "contains": operator.contains, "hash": hash, "repr": repr, "str": str, "int": int, "float": float,
    "index": operator.index, "isinstance": isinstance, "issubclass": issubclass,
    "getattr": getattr, "setattr": setattr, "delattr": delattr,
    "call": lambda function, *args, **kwargs: function(*args, **kwargs),
    "enter": lambda manager: type(manager).__enter__(manager),
    "exit": lambda manager, failed: type(manager).__exit__(manager, *_EXIT[failed]),
    "import": importlib.import_module, "names": lambda module: _public_names(module),
}
# A subclass of a plain type, sent as its value: read with the base type's own methods.
_PLAIN_BASES: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (bool, bool), (int, int.__index__), (float, float.__float__), (str, str.__str__),
    (bytes, lambda b: bytes.__getitem__(b, slice(None))),
    (dict, lambda d: dict(dict.items(d))), (list, lambda s: list(list.__iter__(s))),
    (tuple, lambda s: tuple(tuple.__iter__(s))), (frozenset, lambda s: frozenset(frozenset.__iter__(s))),
    (set, lambda s: set(set.__iter__(s))),
)


def _public_names(module: Any) -> list[str]:
    names = getattr(module, "__all__", None)
    if isinstance(names, list | tuple) and all(type(n) is str for n in names):
        return list(names)
    return [n for n in vars(module) if not n.startswith("_")]


class Host:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.objects: dict[int, Any] = {}
        self.numbers: dict[int, int] = {}  # id(object) -> its handle: one object, one handle
        self.callbacks = 0

    def handle(self, value: Any) -> dict[str, Any]:
        for base, read in _PLAIN_BASES:
            if isinstance(value, base):
                return wire.encode(read(value), self.handle)  # type: ignore[no-any-return]
        number = self.numbers.get(id(value))
        if number is None:
            number = self.numbers[id(value)] = len(self.objects) + 1
            self.objects[number] = value
        if isinstance(value, type) and issubclass(value, BaseException):
            return self.exception_class(value, number)
        return {"t": "h", "id": number, "callable": callable(value)}

    def exception_class(self, cls: type[BaseException], number: int) -> dict[str, Any]:
        if cls.__module__ == "builtins":
            return {"t": "builtin", "name": cls.__name__}
        return {"t": "exc", "id": number, "name": cls.__name__, "module": str(cls.__module__),
                "bases": [self.handle(base) for base in cls.__bases__]}

    def resolve(self, data: dict[str, Any]) -> Any:
        if data.get("t") == "ref" and type(data.get("id")) is int and data["id"] in self.objects:
            return self.objects[data["id"]]
        if data.get("t") == "fn" and type(data.get("id")) is int:
            return TestsFunction(self, data["id"])
        raise wire.WireError("a value that is no plain data nor a handle this side gave")

    def reply_to(self, request: dict[str, Any]) -> None:
        try:
            reply = self.answer(request)
        except (KeyError, TypeError, AttributeError, wire.WireError) as exc:
            reply = {"kind": "fault", "why": f"a request this side cannot read ({type(exc).__name__})"}
        try:
            wire.send(self.sock, {"seq": request.get("seq"), **reply})
        except wire.WireError as exc:  # too large to send: say so, or the tests wait for nothing
            wire.send(self.sock, {"seq": request.get("seq"), "kind": "fault", "why": str(exc)})

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        operation = _OPERATORS[request["op"]]
        args = [wire.decode(a, self.resolve) for a in request["args"]]
        kwargs = {str(k): wire.decode(v, self.resolve) for k, v in request["kwargs"].items()}
        try:
            result = operation(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001  (everything the solution raises is the answer)
            return self.raised(exc)
        try:
            return {"kind": "value", "v": wire.encode(result, self.handle)}
        except Exception as exc:  # noqa: BLE001  (a value that lies about its type, too deep, ...)
            return {"kind": "fault", "why": f"the solution's value cannot be sent ({exc})"}

    def raised(self, exc: BaseException) -> dict[str, Any]:
        try:
            args = wire.encode(list(exc.args), self.handle)
        except (wire.WireError, RecursionError, ValueError):
            args = {"t": "list", "v": [_text(exc)]}
        return {"kind": "raise", "cls": self.handle(type(exc)), "args": args, "str": _text(exc),
                "attrs": self.attributes(exc)}

    def attributes(self, exc: BaseException) -> dict[str, Any]:
        """The exception's own attributes that are plain data (`err.value.position`)."""
        found: dict[str, Any] = {}
        for name, value in list(getattr(exc, "__dict__", {}).items())[:32]:
            if type(name) is str and name.isidentifier() and not name.startswith("__"):
                try:
                    found[name] = wire.encode(value, _not_plain)
                except (wire.WireError, RecursionError, ValueError):
                    continue
        return found


def _not_plain(_: Any) -> dict[str, Any]:
    raise wire.WireError("not plain data")


def _text(exc: BaseException) -> str:
    try:
        return str(exc)[:10_000]
    except Exception:  # noqa: BLE001  (the solution's __str__ may raise anything)
        return type(exc).__name__


class TestsFunction:
    """A function the tests passed (a callback): calling it asks the tests' process to, and
    answers the requests it makes meanwhile."""

    def __init__(self, host: Host, number: int) -> None:
        self.host = host
        self.number = number

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        host = self.host
        host.callbacks += 1
        mine = host.callbacks
        wire.send(host.sock, {"kind": "callback", "cb": mine, "fn": self.number,
                              "args": [wire.encode(a, host.handle) for a in args],
                              "kwargs": {k: wire.encode(v, host.handle) for k, v in kwargs.items()}})
        while True:
            message = wire.receive(host.sock)
            if "op" in message:
                host.reply_to(message)  # the callback's own calls into the solution
            elif message.get("cb") == mine and message.get("kind") == "return":
                return wire.decode(message.get("v"), host.resolve)
            elif message.get("cb") == mine and message.get("kind") == "raise":
                raise _rebuilt(str(message.get("name")), message.get("args"))
            else:
                raise wire.WireError("an answer to another callback")


def _rebuilt(name: str, args: Any) -> BaseException:
    found = getattr(builtins, name, None)
    values = args if type(args) is list else []
    if isinstance(found, type) and issubclass(found, Exception):
        try:
            return found(*values)
        except Exception:  # noqa: BLE001  (a builtin that wants other arguments)
            pass
    return RuntimeError(f"the tests' callback raised {name}: {values!r}"[:2000])


def serve(sock: socket.socket) -> None:
    host = Host(sock)
    host.handle(builtins)  # handle 1: nothing asks for it; numbers start at 2 for the solution
    while True:
        try:
            request = wire.receive(sock)
        except wire.WireError:
            return  # the tests are done (or gone)
        host.reply_to(request)


def main(argv: list[str]) -> int:
    fd, solution = argv
    sys.set_int_max_str_digits(200_000)  # as the tests' side (pytest_runner.MAX_INT_DIGITS)
    sock = socket.socket(fileno=int(fd))
    sys.path.insert(0, solution)
    serve(sock)
    return 0
