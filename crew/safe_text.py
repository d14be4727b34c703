"""Text from a model or a workspace, made safe to show on a terminal.

A terminal obeys what it is sent: ESC starts a CSI, OSC or DCS sequence (clear the screen, set
the window title, write the clipboard with OSC 52, a hidden link with OSC 8), the C1 controls
U+0080-U+009F do the same in one character, CR and BS overwrite what is on the line, and the
bidirectional overrides and isolates (U+202A-U+202E, U+2066-U+2069, "Trojan Source") reorder
what the person reads. Every such character is shown escaped, as visible text (`\\x1b]52;…`),
one character at a time: a sequence split across two streamed chunks is escaped the same way.
Newline and tab stay as they are; CRLF becomes a newline.

`safe_text` is for what a person reads; `json_safe` is for JSON lines on stdout, where the
same characters are written as JSON escapes so the text decodes exactly as it was.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, the C1 controls, the bidi overrides and isolates.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
# In JSON text these can only be inside strings (JSON escapes the C0 controls itself).
_UNSAFE_IN_JSON = re.compile("[\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match[0])
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(text: str) -> str:
    """`text` with every control, C1 and bidi-override character shown as its escape."""
    if _UNSAFE.search(text) is None:  # the common case: nothing to copy
        return text
    return _UNSAFE.sub(_escaped, text.replace("\r\n", "\n"))


def json_safe(line: str) -> str:
    """A JSON text with its C1, DEL and bidi characters written as `\\uXXXX`: the same value
    once parsed, and nothing a terminal would act on when it is printed."""
    return _UNSAFE_IN_JSON.sub(lambda m: f"\\u{ord(m[0]):04x}", line)
