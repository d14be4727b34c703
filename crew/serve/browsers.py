"""What keeps a web page the person visits from using `crew serve` (DNS rebinding, cross-site
requests), as Ollama keeps it from using Ollama.

A page cannot read another origin's answers, but it can send requests: a "simple" POST
(`text/plain`, a form) goes out with no preflight, and a rebound DNS name makes the browser send
the page's requests to 127.0.0.1 under the page's own name. So the Gate asks `Browsers.refusal`
of every request, token or not:

- `Host` must name this server: a loopback name (`localhost`, `*.localhost`, `127.0.0.1`,
  `[::1]`, with or without a port), the address it binds, or one in CREW_SERVE_ALLOWED_HOSTS.
  Bound off loopback the server has a token (`check_exposure`), which a rebound page cannot
  send; there the check is on only when CREW_SERVE_ALLOWED_HOSTS is set, so clients on the
  network reach it by whatever name or address they know it by.
- `Origin`, when sent (browsers send it on every POST), must be one of Ollama's default origins
  (http(s) on localhost, 127.0.0.1, 0.0.0.0, [::1] on any port; app://, file://, tauri://,
  vscode-webview://, vscode-file://) or in CREW_SERVE_ORIGINS. `Sec-Fetch-Site: cross-site`
  without an Origin (an image or a link on another site) is refused too.
- A request body must be JSON: a Content-Type other than application/json is 415 (the official
  ollama and openai clients send application/json; no Content-Type at all is let through).
- A JSON body may nest at most MAX_DEPTH levels (deeper is 400, before any parser recurses).

No CORS headers are sent: a browser app on an allowed origin can send requests but cannot read
cross-origin answers.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass

from crew.settings import Settings

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have (real ones nest < 10)."""

LOOPBACK_ORIGIN_HOSTS = ("localhost", "127.0.0.1", "0.0.0.0", "[::1]")
OLLAMA_SCHEMES = ("app", "file", "tauri", "vscode-webview", "vscode-file")
DEFAULT_ORIGINS = (
    *(f"{scheme}://{host}{port}" for host in LOOPBACK_ORIGIN_HOSTS for scheme in ("http", "https")
      for port in ("", ":*")),
    *(f"{scheme}://*" for scheme in OLLAMA_SCHEMES),
)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# A string (to its closing quote, or to the body's end if it has none), or a run of anything but
# quotes and brackets: what is left after removing both is the brackets, in order. Possessive,
# so a body of unclosed strings and escapes costs one pass, not one per quote.
_INNERMOST = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = re.compile(rb'"(?:[^"\\]|\\.)*+"?|[^"\[\]{}]++', re.S)
_HOST = re.compile(r"(?P<name>\[[^\]]*\]|[^:\[\]]*)(?::(?P<port>[0-9]*))?")


def host_name(value: str) -> str | None:
    """The name in a `Host` header, lower-case, without port, brackets or trailing dot; None if
    it is no host name at all."""
    found = _HOST.fullmatch(value.strip().lower())
    if found is None:
        return None
    name = found["name"].strip("[]").rstrip(".")
    return name or None


def _pattern(origin: str) -> re.Pattern[str]:
    """An origin pattern as Ollama reads OLLAMA_ORIGINS: `*` matches any run of characters."""
    return re.compile(".*".join(re.escape(part) for part in origin.rstrip("/").split("*")), re.I)


def too_deep(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether a JSON text nests arrays and objects deeper than `limit`, or has brackets that do
    not pair up (strings skipped). Linear in the body, whatever it holds."""
    if body.count(b"[") + body.count(b"{") <= limit:  # the usual body: no need to look closer
        return False
    brackets = _NOT_BRACKETS.sub(b"", body)
    # Each pass takes away the innermost pairs, at C speed: what `limit` passes leave is nested
    # deeper than `limit` (or does not pair up, which is no JSON either).
    for _ in range(limit):
        brackets, paired = _INNERMOST.subn(b"", brackets)  # one level a pass, whichever its kind
        if not brackets or not paired:
            break  # all gone; or some that never pair (no JSON, which no parser should recurse into)
    return bool(brackets)


@dataclass(frozen=True)
class Browsers:
    hosts: frozenset[str] | None
    """Host names answered besides loopback; None: any (bound off loopback, none listed)."""
    origins: tuple[re.Pattern[str], ...]
    any_origin: bool = False

    @classmethod
    def of(cls, settings: Settings) -> Browsers:
        listed = {name for entry in settings.serve_allowed_hosts if (name := host_name(entry))}
        bound = host_name(settings.serve_host)
        open_bind = not is_loopback(settings.serve_host)
        hosts = None if open_bind and not listed else frozenset({*listed, *([bound] if bound else [])})
        origins = (*DEFAULT_ORIGINS, *settings.serve_origins)
        return cls(hosts, tuple(_pattern(o) for o in origins if o != "*"), "*" in settings.serve_origins)

    @classmethod
    def loopback(cls) -> Browsers:
        """Loopback names and Ollama's default origins only."""
        return cls(frozenset(), tuple(_pattern(o) for o in DEFAULT_ORIGINS))

    def refusal(self, method: str, headers: Mapping[str, str]) -> tuple[int, str] | None:
        """Why a request is refused (status, message), or None."""
        for check in (self._host, self._origin):
            refused = check(headers)
            if refused is not None:
                return 403, refused
        if method in BODY_METHODS:
            media = headers.get("content-type", "").split(";")[0].strip().lower()
            if media and media != "application/json":
                return 415, (f"the request body must be JSON: send `Content-Type: application/json` "
                             f"(this request sent {media[:60]!r})")
        return None

    def _host(self, headers: Mapping[str, str]) -> str | None:
        given = headers.get("host")
        if self.hosts is None or not given:  # no Host: HTTP/1.0 tools; every browser sends one
            return None
        name = host_name(given)
        if name is not None and (is_loopback(name) or name.endswith(".localhost") or name in self.hosts):
            return None
        return (f"Host {given[:100]!r} is not a name of this server (a page's DNS rebinding looks like "
                "this): connect to 127.0.0.1 or localhost, or add the name to CREW_SERVE_ALLOWED_HOSTS")

    def _origin(self, headers: Mapping[str, str]) -> str | None:
        origin = headers.get("origin")
        if origin is None:
            if headers.get("sec-fetch-site") == "cross-site":
                return ("a request from another web site is refused: crew serve answers programs "
                        "and pages on an allowed origin (CREW_SERVE_ORIGINS)")
            return None
        if self.any_origin or any(p.fullmatch(origin) for p in self.origins):
            return None
        return (f"browser origin {origin[:100]!r} is not allowed: add it to CREW_SERVE_ORIGINS on the "
                "server (comma-separated, like OLLAMA_ORIGINS)")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
