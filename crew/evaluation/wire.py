"""The wire between the hidden tests and the solution they grade, each in a process of its own.

A message is a 4-byte big-endian length and that many bytes of JSON: one object, at most
`MAX_MESSAGE_BYTES`, nested at most `MAX_DEPTH` deep. A value in a message is plain data, tagged
where JSON has no type of its own: None, bool, int, float and str as JSON writes them; bytes,
list, tuple, set, frozenset and dict as `{"t": kind, "v": ...}` (a dict as its pairs); and the
standard library's value types that exercises pass and return (complex, Decimal, Fraction,
date, time, datetime and timedelta, with a fixed-offset or IANA time zone), each by its
canonical fields. Anything else is a tag the side reading it decides on (a handle to a remote
object), or malformed.

Decoding builds exact builtin types only (JSON's own, then the constructors of the tags): what
the solution sends can never be a subclass with methods of its own. Anything off (a bad length,
bad JSON, a bare JSON list or object where a tagged value belongs, an unhashable key, too deep)
is a `WireError`. This module imports only the standard library: it is copied into the grading
sandboxes as part of the package `crew_grading` (see grading.py).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import socket
import struct
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

MAX_MESSAGE_BYTES = 8 << 20
MAX_DEPTH = 64
_HEADER = struct.Struct(">I")
_SCALARS = (type(None), bool, int, float, str)
_SEQUENCES: dict[str, Callable[[list[Any]], Any]] = {
    "list": list, "tuple": tuple, "set": set, "frozenset": frozenset,
}


class WireError(Exception):
    """A message that is malformed, too large or too deep, or a peer that is gone."""


def send(sock: socket.socket, message: dict[str, Any]) -> None:
    try:
        data = json.dumps(message, separators=(",", ":")).encode()
    except (ValueError, TypeError, RecursionError) as exc:
        raise WireError(f"a message that cannot be written ({type(exc).__name__})") from None
    if len(data) > MAX_MESSAGE_BYTES:
        raise WireError(f"a message of {len(data)} bytes, over the {MAX_MESSAGE_BYTES} allowed")
    try:
        sock.sendall(_HEADER.pack(len(data)) + data)
    except OSError as exc:
        raise WireError(f"the other side is gone ({exc.strerror or type(exc).__name__})") from None


def receive(sock: socket.socket) -> dict[str, Any]:
    """The next message (a JSON object); WireError when there is none or it is malformed."""
    (size,) = _HEADER.unpack(_exactly(sock, _HEADER.size))
    if size > MAX_MESSAGE_BYTES:
        raise WireError(f"a message of {size} bytes announced, over the {MAX_MESSAGE_BYTES} allowed")
    data = _exactly(sock, size)
    try:
        message = json.loads(data)
    except (ValueError, RecursionError):
        raise WireError("a message that is not JSON") from None
    if type(message) is not dict:
        raise WireError("a message that is not a JSON object")
    return message


def _exactly(sock: socket.socket, size: int) -> bytes:
    chunks = bytearray()
    while len(chunks) < size:
        try:
            chunk = sock.recv(min(size - len(chunks), 1 << 20))
        except TimeoutError:
            raise WireError("no answer in time") from None
        except OSError as exc:
            raise WireError(f"the other side is gone ({exc.strerror or type(exc).__name__})") from None
        if not chunk:
            raise WireError("the other side is gone (it closed the connection)")
        chunks += chunk
    return bytes(chunks)


def encode(value: Any, other: Callable[[Any], dict[str, Any]], depth: int = 0) -> Any:
    """`value` as JSON-ready data: plain data as itself (exact types only), the rest by `other`."""
    if depth > MAX_DEPTH:
        raise WireError(f"a value nested deeper than {MAX_DEPTH}")
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is bytes:
        return {"t": "bytes", "v": base64.b64encode(value).decode()}
    if kind is dict:
        return {"t": "dict", "v": [[encode(k, other, depth + 1), encode(v, other, depth + 1)]
                                   for k, v in value.items()]}
    if kind in (list, tuple, set, frozenset):
        return {"t": kind.__name__, "v": [encode(item, other, depth + 1) for item in value]}
    known = _encode_value(value)
    return known if known is not None else other(value)


def _encode_value(value: Any) -> dict[str, Any] | None:
    """A standard-library value type by its canonical fields; None when `value` is none of them."""
    kind = type(value)
    if kind is complex:
        return {"t": "complex", "v": [value.real, value.imag]}
    if kind is Decimal:
        return {"t": "decimal", "v": str(value)}
    if kind is Fraction:
        return {"t": "fraction", "v": [value.numerator, value.denominator]}
    if kind is dt.timedelta:
        return {"t": "timedelta", "v": [value.days, value.seconds, value.microseconds]}
    if kind is dt.date:
        return {"t": "date", "v": value.isoformat()}
    if kind in (dt.datetime, dt.time):
        zone = value.tzinfo
        if zone is None or type(zone) is dt.timezone:
            return {"t": kind.__name__, "v": value.isoformat(), "fold": value.fold}
        if type(zone) is ZoneInfo:
            naive = value.replace(tzinfo=None).isoformat()
            return {"t": kind.__name__, "v": naive, "fold": value.fold, "zone": zone.key}
    return None


def _decode_value(tag: Any, data: dict[str, Any]) -> Any:
    """The value type `tag` names, rebuilt from exact fields; raises TypeError or ValueError."""
    v: Any = data.get("v")
    if tag == "complex" and _numbers(v, (float, int), 2):
        return complex(v[0], v[1])
    if tag == "decimal" and type(v) is str:
        return Decimal(v)
    if tag == "fraction" and _numbers(v, (int,), 2):
        return Fraction(v[0], v[1])
    if tag == "timedelta" and _numbers(v, (int,), 3):
        return dt.timedelta(days=v[0], seconds=v[1], microseconds=v[2])
    if tag == "date" and type(v) is str:
        return dt.date.fromisoformat(v)
    if tag in ("datetime", "time") and type(v) is str and data.get("fold") in (0, 1):
        built = (dt.datetime if tag == "datetime" else dt.time).fromisoformat(v)
        zone = data.get("zone")
        if zone is not None:
            if type(zone) is not str or built.tzinfo is not None:
                raise ValueError("a zone beside an offset")
            built = built.replace(tzinfo=ZoneInfo(zone))
        return built.replace(fold=data["fold"])
    raise ValueError(f"a malformed {tag}")


def _numbers(v: Any, kinds: tuple[type, ...], count: int) -> bool:
    return type(v) is list and len(v) == count and all(type(n) in kinds for n in v)


_VALUES = ("complex", "decimal", "fraction", "timedelta", "date", "datetime", "time")


def decode(data: Any, other: Callable[[dict[str, Any]], Any], depth: int = 0) -> Any:
    """The value `data` (as `json.loads` built it) stands for, `other` deciding on other tags."""
    if depth > MAX_DEPTH:
        raise WireError(f"a value nested deeper than {MAX_DEPTH}")
    kind = type(data)
    if kind in _SCALARS:
        return data
    if kind is not dict:
        raise WireError(f"a bare JSON {kind.__name__} where a tagged value belongs")
    tag = data.get("t")
    try:
        if tag == "bytes" and type(data.get("v")) is str:
            return base64.b64decode(data["v"], validate=True)
        items = data.get("v")
        if tag == "dict" and type(items) is list:
            return {_key(pair, other, depth): decode(pair[1], other, depth + 1) for pair in items}
        if tag in _SEQUENCES and type(items) is list:
            return _SEQUENCES[tag]([decode(item, other, depth + 1) for item in items])
        if tag in _VALUES:
            return _decode_value(tag, data)
    except (TypeError, ValueError, ArithmeticError, InvalidOperation, ZoneInfoNotFoundError) as exc:
        # an unhashable member or key, bad base64, a malformed value (a zero denominator, a
        # date out of range, an unknown or path-like zone name)
        raise WireError(f"a malformed {tag} ({type(exc).__name__})") from None
    if tag in ("bytes", "dict", *_SEQUENCES, *_VALUES):
        raise WireError(f"a malformed {tag}")
    return other(data)


def _key(pair: Any, other: Callable[[dict[str, Any]], Any], depth: int) -> Any:
    if type(pair) is not list or len(pair) != 2:
        raise WireError("a dict item that is not a pair")
    return decode(pair[0], other, depth + 1)
