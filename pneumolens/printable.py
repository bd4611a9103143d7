"""Make text safe for a terminal: control characters from file names are shown escaped, never sent raw.

A file name may hold any byte but ``/`` and NUL: a newline that splits a one-line error in two, an
ESC sequence that recolours or rewrites the terminal, a right-to-left override that reorders
what is shown, or bytes that are not UTF-8 (which make ``print`` raise on a strict stdout).
Everything the command line prints that may contain a name it did not choose goes through
:func:`printable`; :class:`PrintableFormatter` does the same for log records.
"""

from __future__ import annotations

import logging
import re

#: C0 and C1 controls, DEL, Unicode line/paragraph separators, bidirectional controls, and the lone
#: surrogates by which Python carries a file name's undecodable bytes.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch)
    if ch in _NAMED:
        return _NAMED[ch]
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's stand-in for the raw byte code - 0xDC00
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: object) -> str:
    """``str(text)`` with every control character escaped (``\\n``, ``\\x1b``, ``\\u202e``, ``\\xff`` for a raw byte).

    Example::

        >>> printable("bad\\nname\\x1b[31m.png")
        'bad\\\\nname\\\\x1b[31m.png'
    """
    return _UNSAFE.sub(_escape, str(text))


class PrintableFormatter(logging.Formatter):
    """A log formatter whose messages are :func:`printable` (a record is one line on the terminal)."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        return printable(super().formatMessage(record))
