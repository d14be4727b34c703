"""The tests' side of grading: the solution's modules, imported through a proxy to its process.

`install(sock, names, timeout)` puts an import hook first on `sys.meta_path` for the solution's
top-level module names. Importing one asks the solution's process (solution_host.py) to import
it; what comes back, and what every later operation returns, is either plain data, rebuilt as
exact builtin types (wire.py), or a `Remote`: a handle whose attributes, calls, items, iteration,
length, truth, hash, arithmetic, comparisons and `isinstance` checks are requests on the wire.

What the solution's code cannot do from there:
- hand the tests an object with methods of its own: a value is plain data or a handle;
- make a handle equal to plain data, or ordered against it: `==`, `!=`, `<`... between a handle
  and anything but another handle are Python's own (never equal; ordering raises TypeError), so
  a value equal to everything passes no `assert f(x) == expected`;
- raise anything but a builtin `Exception` (same type, same args) or its own exception class,
  rebuilt here as a local class deriving from the builtins its class derives from (so
  `pytest.raises(ValueError)` and `pytest.raises(module.ItsError)` catch it);
- answer late, malformed, or not at all: each is a `SolutionFault`, a `BaseException` (so no
  `pytest.raises(Exception)` catches it) that fails the test; after a timeout or a malformed
  message the connection is dropped and every later request fails the same way.
A function the tests pass to the solution (a callback) stays here: the solution can only call
it (a `callback` message while the tests wait on a request), with plain data and handles, and
hears back plain data, a handle or the builtin exception it raised; it never gets at the
function's attributes or the tests' objects. Any other object of the tests' own cannot be passed
(a `SolutionFault`).
"""

from __future__ import annotations

import builtins
import importlib.abc
import importlib.machinery
import socket
import sys
import types
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

from . import wire

MAX_NAME = 200
# Callbacks within callbacks (each a request within a request): the stack of both processes.
MAX_CALLBACK_DEPTH = 32


class SolutionFault(BaseException):
    """The solution's process failed to answer as the wire requires: the test fails."""


class Connection:
    def __init__(self, sock: socket.socket, timeout: float) -> None:
        sock.settimeout(timeout)
        self.sock = sock
        self.seq = 0
        self.dead: str | None = None
        self.classes: dict[int, type[BaseException]] = {}
        self.callables: dict[Any, Callable[..., Any]] = {}
        self.remotes: dict[int, Remote] = {}  # one object of the solution's, one handle here (`is`)
        self.depth = 0

    def request(self, op: str, *args: Any, **kwargs: Any) -> Any:
        if self.dead is not None:
            raise SolutionFault(f"the solution's process is unusable: {self.dead}")
        self.seq += 1
        mine = self.seq
        try:
            wire.send(self.sock, {"seq": mine, "op": op, "args": [self.encode(a) for a in args],
                                  "kwargs": {k: self.encode(v) for k, v in kwargs.items()}})
            while True:
                reply = wire.receive(self.sock)
                if reply.get("kind") != "callback":
                    break
                self.callback(reply)
            if reply.get("seq") != mine:
                raise wire.WireError("an answer to another request")
        except wire.WireError as exc:
            raise self.drop(str(exc)) from None
        try:
            return self.answer(reply, op)
        except wire.WireError as exc:
            raise self.drop(str(exc)) from None

    def drop(self, why: str) -> SolutionFault:
        """The connection is no longer usable (its state is unknown): every later request fails."""
        if self.dead is None:
            self.dead = why
            self.sock.close()
        return SolutionFault(f"the solution's process is unusable: {why}")

    def callback(self, message: dict[str, Any]) -> None:
        """The solution calls a function the tests gave it: run it here, send what it returned
        (plain data or a handle only) or the builtin exception it raised."""
        function, number = self.callables.get(message.get("fn")), message.get("cb")
        args, kwargs = message.get("args"), message.get("kwargs")
        if function is None or not _number(number) or type(args) is not list or type(kwargs) is not dict \
                or self.depth >= MAX_CALLBACK_DEPTH:
            raise wire.WireError("a callback of a function the tests never gave, or too deep")
        values = [wire.decode(a, self.tagged) for a in args]  # malformed: WireError, the wire dropped
        named = {str(k): wire.decode(v, self.tagged) for k, v in kwargs.items()}
        self.depth += 1
        try:
            result = function(*values, **named)
            answer = {"kind": "return", "v": self.encode(result)}
        except Exception as exc:  # noqa: BLE001  (the solution called it: it hears what it raised)
            name = type(exc).__name__ if type(exc).__module__ == "builtins" else "RuntimeError"
            answer = {"kind": "raise", "name": name, "args": [str(a)[:1000] for a in exc.args]}
        except BaseException:  # pytest.fail, a SolutionFault: the test ends here, the wire too
            self.drop("a callback of the tests ended the test")
            raise
        finally:
            self.depth -= 1
        wire.send(self.sock, {"cb": number, **answer})

    def encode(self, value: Any) -> Any:
        def local(other: Any) -> dict[str, Any]:
            if isinstance(other, Remote) and object.__getattribute__(other, "_crew_conn") is self:
                return {"t": "ref", "id": object.__getattribute__(other, "_crew_id")}
            for number, cls in self.classes.items():
                if other is cls:  # an exception class of the solution's, rebuilt here
                    return {"t": "ref", "id": number}
            if callable(other):  # a callback: the solution may call it, nothing more
                self.callables[len(self.callables) + 1] = other
                return {"t": "fn", "id": len(self.callables)}
            raise SolutionFault(f"a {type(other).__name__} of the tests cannot be passed to the "
                                "solution (only plain data, functions and the solution's own objects)")
        return wire.encode(value, local)

    def answer(self, reply: dict[str, Any], op: str) -> Any:
        kind = reply.get("kind")
        if kind == "value":
            return wire.decode(reply.get("v"), self.tagged)
        if kind == "raise":
            raised = self.exception(reply)
            if isinstance(raised, StopIteration) and op != "next":
                # As PEP 479 does for generators: a StopIteration out of a call would silently end
                # the tests' loop around it (`for x in map(solution_fn, cases)`), no assert run.
                raise SolutionFault(f"the solution raised StopIteration from {op}, not from next()")
            raise raised
        if kind == "fault":
            raise SolutionFault(f"the solution's process says: {str(reply.get('why'))[:500]}")
        raise wire.WireError("an answer of no known kind")

    def tagged(self, data: dict[str, Any]) -> Any:
        if data.get("t") == "h" and _number(data.get("id")) and type(data.get("callable")) is bool:
            return self.remotes.setdefault(data["id"], Remote(self, data["id"]))
        return self.exception_class(data)

    def exception_class(self, data: dict[str, Any], depth: int = 0) -> type[BaseException]:
        tag, name = data.get("t"), data.get("name")
        if type(name) is not str or not name.isidentifier() or len(name) > MAX_NAME or depth > 32:
            raise wire.WireError("a value that is no plain data, handle nor exception class")
        if tag == "builtin":
            found = getattr(builtins, name, None)
            if isinstance(found, type) and issubclass(found, Exception):
                return found
            return _Unraisable  # SystemExit, KeyboardInterrupt, GeneratorExit, ...: a failure here
        number, bases, module = data.get("id"), data.get("bases"), data.get("module")
        if tag != "exc" or type(number) is not int or number < 1 or type(bases) is not list \
                or type(module) is not str:
            raise wire.WireError("a malformed exception class")
        if number not in self.classes:
            local = tuple(self.exception_class(b, depth + 1) if type(b) is dict else _bad(b) for b in bases)
            self.classes[number] = _proxy_class(name, module[:MAX_NAME], local)
        return self.classes[number]

    def exception(self, reply: dict[str, Any]) -> BaseException:
        described = reply.get("cls")
        cls = self.exception_class(described if isinstance(described, dict) else {})
        args = wire.decode(reply.get("args"), self.tagged)
        text = reply.get("str")
        if type(args) is not list or type(text) is not str:
            raise wire.WireError("a malformed exception")
        if cls is _Unraisable or issubclass(cls, _Raised) or not issubclass(cls, Exception):
            made: BaseException = cls.__new__(cls)
            made.args = tuple(args)
            if isinstance(made, _Raised):
                made.text = text
        else:
            try:
                made = cls(*args)
            except Exception:  # noqa: BLE001  (a builtin whose constructor wants other arguments)
                return SolutionFault(f"the solution raised {cls.__name__}: {text[:500]}")
        attrs = reply.get("attrs", {})
        if type(attrs) is not dict:
            raise wire.WireError("malformed exception attributes")
        for name, value in list(attrs.items())[:32]:  # plain data only: a handle is refused
            if type(name) is str and name.isidentifier() and not name.startswith("_"):
                setattr(made, name, wire.decode(value, _no_handle))
        return made


def _number(value: Any) -> bool:
    return type(value) is int and value > 0


def _no_handle(_: Any) -> Any:
    raise wire.WireError("an exception attribute that is no plain data")


def _bad(_: Any) -> type[BaseException]:
    raise wire.WireError("a malformed exception base")


class _Raised:
    """What every exception class of the solution's is made of here: its text as it said it."""

    text = ""

    def __str__(self) -> str:
        return self.text


class _Unraisable(SolutionFault):
    """The solution raised a builtin that is no `Exception` (SystemExit and its kind)."""

    def __str__(self) -> str:
        return f"the solution raised something that is no Exception: {self.args!r}"[:1000]


def _proxy_class(name: str, module: str, bases: Sequence[type[BaseException]]) -> type[BaseException]:
    usable = tuple(b for b in bases if issubclass(b, Exception))
    if not usable:  # a class of the solution's that is no Exception: raising it fails the test
        return type(name, (_Raised, _Unraisable), {"__module__": module})
    try:
        made = type(name, (_Raised, *usable), {"__module__": module})
    except TypeError:  # builtins whose layouts cannot be combined: the first one
        made = type(name, (_Raised, usable[0]), {"__module__": module})
    return made


def _remote(op: str) -> Any:
    def method(self: Remote, *args: Any) -> Any:
        return object.__getattribute__(self, "_crew_conn").request(op, self, *args)
    method.__name__ = f"__{op}__"
    return method


def _reflected(op: str) -> Any:
    def method(self: Remote, other: Any) -> Any:
        return object.__getattribute__(self, "_crew_conn").request(op, other, self)
    method.__name__ = f"__r{op}__"
    return method


def _compared(op: str) -> Any:
    def method(self: Remote, other: Any) -> Any:
        if not isinstance(other, Remote):
            return NotImplemented  # a handle is never equal to, nor ordered with, plain data
        return object.__getattribute__(self, "_crew_conn").request(op, self, other)
    method.__name__ = f"__{op}__"
    return method


def _typed(op: str, kind: type) -> Any:
    def method(self: Remote, *args: Any) -> Any:
        result = object.__getattribute__(self, "_crew_conn").request(op, self, *args)
        if type(result) is not kind:
            raise SolutionFault(f"the solution's __{op}__ gave no {kind.__name__}")
        return result
    method.__name__ = f"__{op}__"
    return method


def _forced_bool(remote: Remote, op: str, *args: Any) -> bool:
    result = object.__getattribute__(remote, "_crew_conn").request(op, *args)
    if type(result) is not bool:
        raise SolutionFault(f"the solution's {op} gave no bool")
    return result


class Remote:
    """An object of the solution's, in its process: every use of it is a request there."""

    __slots__ = ("_crew_conn", "_crew_id")

    def __init__(self, conn: Connection, number: int) -> None:
        object.__setattr__(self, "_crew_conn", conn)
        object.__setattr__(self, "_crew_id", number)

    def __getattr__(self, name: str) -> Any:
        return object.__getattribute__(self, "_crew_conn").request("getattr", self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__getattribute__(self, "_crew_conn").request("setattr", self, name, value)

    def __delattr__(self, name: str) -> None:
        object.__getattribute__(self, "_crew_conn").request("delattr", self, name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return object.__getattribute__(self, "_crew_conn").request("call", self, *args, **kwargs)

    def __iter__(self) -> Iterator[Any]:
        return _Iterator(object.__getattribute__(self, "_crew_conn").request("iter", self))

    def __enter__(self) -> Any:
        return object.__getattribute__(self, "_crew_conn").request("enter", self)

    def __exit__(self, kind: Any, value: Any, traceback: Any) -> Literal[False]:
        object.__getattribute__(self, "_crew_conn").request("exit", self, kind is not None)
        return False  # never the solution's word: a True would swallow the tests' own failure

    def __repr__(self) -> str:
        try:
            text = object.__getattribute__(self, "_crew_conn").request("repr", self)
        except (Exception, SolutionFault):  # a failing repr shows as the handle (pytest's report)
            text = None
        return text if type(text) is str else f"<solution object {object.__getattribute__(self, '_crew_id')}>"

    def __instancecheck__(self, instance: Any) -> bool:  # isinstance(x, SolutionClass)
        return _forced_bool(self, "isinstance", instance, self)

    def __subclasscheck__(self, subclass: Any) -> bool:
        return _forced_bool(self, "issubclass", subclass, self)

    __eq__ = _compared("eq")
    __ne__ = _compared("ne")
    __lt__ = _compared("lt")
    __le__ = _compared("le")
    __gt__ = _compared("gt")
    __ge__ = _compared("ge")
    __str__ = _typed("str", str)
    __bool__ = _typed("bool", bool)
    __len__ = _typed("len", int)
    __hash__ = _typed("hash", int)
    __int__ = _typed("int", int)
    __index__ = _typed("index", int)
    __float__ = _typed("float", float)
    __contains__ = _typed("contains", bool)
    __next__ = _remote("next")
    __getitem__ = _remote("getitem")
    __setitem__ = _remote("setitem")
    __delitem__ = _remote("delitem")
    __neg__ = _remote("neg")
    __pos__ = _remote("pos")
    __abs__ = _remote("abs")
    __invert__ = _remote("invert")


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
            "lshift", "rshift"):
    setattr(Remote, f"__{_op}__", _remote(_op))
    setattr(Remote, f"__r{_op}__", _reflected(_op))


def _difference(reflected: bool) -> Any:
    """`a - b` of a handle and a plain value. unittest's assertAlmostEqual judges closeness by
    `abs(a - b)`: an object of the solution's that answered with a number (0.0) would pass any
    such comparison. So that difference must be an object of the solution's, never a number."""
    def method(self: Remote, other: Any) -> Any:
        conn = object.__getattribute__(self, "_crew_conn")
        result = conn.request("sub", other, self) if reflected else conn.request("sub", self, other)
        if not isinstance(other, Remote) and type(result) in (int, float, complex, bool):
            raise SolutionFault("an object of the solution's minus a number gave a number: "
                                "closeness checks (assertAlmostEqual) would take it for the answer")
        return result
    method.__name__ = "__rsub__" if reflected else "__sub__"
    return method


for _name, _side in (("__sub__", False), ("__rsub__", True)):
    setattr(Remote, _name, _difference(_side))


class _Iterator:
    """The tests' iterator over an iterator of the solution's."""

    def __init__(self, remote: Any) -> None:
        self.remote = remote

    def __iter__(self) -> _Iterator:
        return self

    def __next__(self) -> Any:
        if not isinstance(self.remote, Remote):
            raise SolutionFault("the solution's __iter__ gave no iterator")
        return object.__getattribute__(self.remote, "_crew_conn").request("next", self.remote)


class RemoteModule(types.ModuleType):
    """A module of the solution's: its attributes are requests to its process."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__") and name != "__all__":
            raise AttributeError(name)  # the import system's own questions: not the solution's
        handle = self.__dict__["_crew_handle"]
        return object.__getattribute__(handle, "_crew_conn").request("getattr", handle, name)


class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports of the solution's top-level names (and what is under them), answered remotely."""

    def __init__(self, conn: Connection, names: Sequence[str]) -> None:
        self.conn = conn
        self.names = frozenset(names)

    def find_spec(self, fullname: str, path: Any,
                  target: Any = None) -> importlib.machinery.ModuleSpec | None:
        top = fullname.partition(".")[0]
        if top not in self.names or _importable_here(top):
            return None  # a module of the tests' own (a helper beside them, an installed package)
        return importlib.machinery.ModuleSpec(fullname, self, is_package=True)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType:
        handle = self.conn.request("import", spec.name)
        if not isinstance(handle, Remote):
            raise ImportError(f"the solution's module {spec.name} is no module")
        module = RemoteModule(spec.name)
        module.__dict__["_crew_handle"] = handle
        return module

    def exec_module(self, module: types.ModuleType) -> None:
        handle = module.__dict__["_crew_handle"]
        names = self.conn.request("names", handle)
        if type(names) is list and all(type(n) is str for n in names):
            # What `from module import *` takes: never a builtin's name (HumanEval's test file
            # starts with one, and a solution's `abs` would answer `check`'s own comparisons),
            # a dunder, nor pytest's hooks and markers (`pytest_plugins`).
            module.__dict__["__all__"] = [n for n in names if n.isidentifier() and not n.startswith("_")
                                          and n not in _BUILTINS and not n.startswith("pytest")]
        module.__path__ = []


_BUILTINS = frozenset(vars(builtins))


def _importable_here(name: str) -> bool:
    return name in sys.builtin_module_names or importlib.machinery.PathFinder.find_spec(name) is not None


def install(sock: socket.socket, names: Sequence[str], timeout: float) -> Connection:
    conn = Connection(sock, timeout)
    sys.meta_path.insert(0, Finder(conn, names))
    return conn
