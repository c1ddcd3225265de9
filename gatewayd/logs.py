"""The log: one line per record, with no secret and nothing a sender could disguise.

Log lines quote what outsiders wrote (a URL path, a server's reply, a header in an exception).
Every record passes two filters on the one handler, whatever logged it:

- secrets are masked: the configured passwords, and any token a request carried, such as those
  aiohttp quotes when it logs a request it cannot parse;
- control characters are escaped (`\\r`, `\\n`, `\\x1b`, `\\u2028`, bidirectional overrides): a CR LF
  in a subject or a path cannot forge a line of its own, nor an ANSI sequence or a right-to-left
  override hide or reorder text on a terminal. A traceback keeps its lines, each indented under
  its record, so that no line of it reads as a record of its own.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections.abc import Sequence

# Credentials in a request: aiohttp logs a request it cannot parse (a header too long, a bare LF)
# quoting the offending bytes. A token in the URL (server.allow_query_token), its name in any
# percent-encoding (aiohttp decodes `access%5Ftoken` too); an Authorization header's value; and
# a quoted value that starts with its scheme (an over-long header is quoted without its name).
_QUERY_NAME = "".join(f"(?:{re.escape(c)}|%{ord(c):02x})" for c in "access_token")
_CREDENTIALS = re.compile(
    rf"({_QUERY_NAME}=)[^&\s\"'#]*|(authorization:[ \t]*)[^'\"\r\n]*|(['\"](?:bearer|basic)[ \t]+)[^\s'\"]+",
    re.IGNORECASE,
)
_BIDI_CONTROLS = [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]
_ESCAPES = {
    c: ascii(chr(c))[1:-1]
    for c in [*range(0x20), *range(0x7F, 0xA0), 0x2028, 0x2029, *_BIDI_CONTROLS]
    if unicodedata.category(chr(c)) in ("Cc", "Cf", "Zl", "Zp")
}
_ESCAPES_BUT_LF = {c: text for c, text in _ESCAPES.items() if c != ord("\n")}


class _RedactSecrets(logging.Filter):
    """Defence in depth: no configured password, and no token a request carried, can reach a log
    line, whatever logged it."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        self._secrets = [s for s in secrets if len(s) >= 4]

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return _CREDENTIALS.sub(_masked, text)

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self._redact(record.getMessage()), None
        if record.exc_info:
            # Tracebacks are rendered here, once, so they pass through the redaction too.
            record.exc_text = self._redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


def _masked(found: re.Match[str]) -> str:
    return "".join(part for part in found.groups() if part) + "***"


class _OneLine(logging.Filter):
    """Each record one line; what follows it (a traceback) indented. After _RedactSecrets,
    which renders the message and the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = record.getMessage().translate(_ESCAPES), None
        if record.exc_text:
            record.exc_text = _indented(record.exc_text)
        if record.stack_info:
            record.stack_info = _indented(record.stack_info)
        return True


def _indented(text: str) -> str:
    return "\n".join("  " + line for line in text.translate(_ESCAPES_BUT_LF).split("\n"))


def setup_logging(level: str, secrets: Sequence[str] = ()) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_RedactSecrets(secrets))
    handler.addFilter(_OneLine())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
