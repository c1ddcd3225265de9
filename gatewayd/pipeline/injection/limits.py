"""Caps on the work one message may cost: characters per channel, HTML tokens and nesting, encoded
blobs, URLs, and the length of a quoted snippet."""

from __future__ import annotations

MAX_TEXT_CHARS = 64 * 1024  # per channel: text body, visible HTML text, hidden text, comments
MAX_HTML_CHARS = 256 * 1024
MAX_SUBJECT_CHARS = 1024  # also per display name and attachment file name
MAX_NAMES = 50  # display names per address field, attachment file names per message
MAX_HTML_TOKENS = 20000  # markup beyond this is scanned as plain text (no hidden/visible verdict)
MAX_TAG_CHARS = 2048
MAX_STACK = 4096
MAX_BLOBS = 8
MAX_BLOB_CHARS = 16 * 1024
MAX_URLS = 200
SNIPPET = 80
