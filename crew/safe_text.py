"""Text from a model or a workspace, made safe to show on a terminal.

A terminal obeys what it is sent: ESC starts a CSI, OSC or DCS sequence (clear the screen, set
the window title, write the clipboard with OSC 52, a hidden link with OSC 8), the C1 controls
U+0080-U+009F do the same in one character, CR and BS overwrite what is on the line, and the
bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069, "Trojan Source") reorder
what the person reads. Every such character is shown escaped, as visible text (`\\x1b]52;…`),
one character at a time: a sequence split across two streamed chunks is escaped the same way.
So are the characters a person cannot see but a model reads: zero-width space and word joiner,
the direction marks (LRM, RLM, ALM), the byte-order mark, line and paragraph separators, and the
Unicode tag characters (U+E0000-U+E007F, which spell hidden ASCII). Zero-width joiner and
non-joiner stay: scripts and emoji need them. Newline and tab stay as they are; CRLF becomes a
newline. `one_line` escapes newline and tab too, for a log line nobody else may forge.

`safe_text` is for what a person reads; `json_safe` is for JSON lines on stdout, where the
same characters are written as JSON escapes so the text decodes exactly as it was.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, the C1 controls, the bidi overrides and isolates.
_CONTROLS = "\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069"
# What is not seen: ALM, ZW space, LRM/RLM, separators, word joiner and invisible operators,
# BOM, tag characters.
_INVISIBLE = "\u061c\u200b\u200e\u200f\u2028\u2029\u2060-\u2064\ufeff\U000e0000-\U000e007f"
_UNSAFE = re.compile(f"[{_CONTROLS}{_INVISIBLE}]")
_UNSAFE_LINE = re.compile(f"[\t\n{_CONTROLS}{_INVISIBLE}]")
# In JSON text these can only be inside strings (JSON escapes the C0 controls itself).
_UNSAFE_IN_JSON = re.compile(f"[\x7f-\x9f\u202a-\u202e\u2066-\u2069{_INVISIBLE}]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe_text(text: str) -> str:
    """`text` with every control, C1 and bidi-override character shown as its escape."""
    if _UNSAFE.search(text) is None:  # the common case: nothing to copy
        return text
    return _UNSAFE.sub(_escaped, text.replace("\r\n", "\n"))


def one_line(text: str) -> str:
    """`safe_text` with newline and tab escaped as well: what a client sent, in one log line."""
    return _UNSAFE_LINE.sub(_escaped, text)


def json_safe(line: str) -> str:
    """A JSON text with its C1, DEL and bidi characters written as `\\uXXXX`: the same value
    once parsed, and nothing a terminal would act on when it is printed."""
    return _UNSAFE_IN_JSON.sub(_json_escaped, line)


def _json_escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    if code < 0x10000:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)  # JSON spells the rest as a surrogate pair
    return f"\\u{0xd800 + high:04x}\\u{0xdc00 + low:04x}"
