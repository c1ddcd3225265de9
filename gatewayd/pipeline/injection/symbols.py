"""The symbols the injection stage reports, with their default weights and meanings, and the levels
a score falls in."""

from __future__ import annotations

from collections.abc import Mapping

from gatewayd.config import INJECTION_LEVELS

# Symbol -> (default weight in [0, 1], what it means). A finding scores weight x factor, the factor
# in (0, 1] for the graded ones.
SYMBOLS: dict[str, tuple[float, str]] = {
    # Instructions aimed at the agent (any channel).
    "INJ_IGNORE_INSTRUCTIONS": (
        0.7,
        "ignore/override previous or system instructions (en, de, fr, es, it, pt, nl)",
    ),
    "INJ_DISREGARD_ABOVE": (0.35, "'disregard the above': people write it about their own mail too"),
    "INJ_NEW_INSTRUCTIONS": (
        0.35,
        "'new instructions:', 'your new task is', 'instructions from your administrator:'",
    ),
    "INJ_ROLE_HIJACK": (0.5, "'you are now DAN', 'act as an unrestricted AI'"),
    "INJ_JAILBREAK": (0.45, "'do anything now', 'developer mode enabled', 'jailbreak mode'"),
    "INJ_PROMPT_LEAK": (0.5, "asks for the system prompt or the agent's instructions"),
    "INJ_ADDRESSES_AGENT": (0.3, "speaks to the AI reading the mail ('if you are an AI assistant')"),
    "INJ_COVERT_ACTION": (0.4, "forward or delete mail, act silently, do not tell the user"),
    "INJ_OBFUSCATED": (0.4, "an instruction found only after undoing spacing, homoglyphs or leetspeak"),
    "INJ_MIXED_SCRIPT": (0.15, "a word mixing Latin with Cyrillic or Greek letters"),
    # Fake conversation and tool markup.
    "INJ_FAKE_CHAT_MARKUP": (0.7, "chat-template tokens: <|im_start|>, [INST], <<SYS>>"),
    "INJ_FAKE_TOOL_MARKUP": (0.6, "tool/function-call tags: </tool_result>, <function_calls>"),
    "INJ_FAKE_SYSTEM_HEADER": (0.5, "'### System:', 'BEGIN SYSTEM PROMPT', '[SYSTEM]'"),
    "INJ_FAKE_ROLE_JSON": (0.4, 'JSON chat messages: {"role": "system"}'),
    "INJ_FAKE_ROLE_TURN": (0.4, "a System:/Assistant: line giving orders, or a fake transcript"),
    "INJ_ROLE_LABEL": (0.05, "'System:' or 'Assistant:' at a line start (common in logs)"),
    # Hidden text and invisible characters.
    "INJ_HIDDEN_TEXT": (0.2, "HTML text hidden by CSS, attributes or <template> (half for short text)"),
    "INJ_INVISIBLE_COLOR": (0.2, "HTML text in the background colour (white on white)"),
    "INJ_TINY_FONT": (0.15, "HTML text in a font too small to read"),
    "INJ_HIDDEN_INSTRUCTIONS": (0.9, "instructions in hidden text, attributes or tag characters"),
    "INJ_COMMENT_INSTRUCTIONS": (0.8, "instructions in an HTML comment"),
    "INJ_ZERO_WIDTH": (0.3, "zero-width characters inside words (graded by count)"),
    "INJ_BIDI_CONTROL": (0.3, "bidi override/embedding controls (only overrides in RTL text)"),
    "INJ_TAG_CHARS": (0.5, "Unicode tag characters (invisible ASCII), other than emoji flags"),
    # Encoded payloads.
    "INJ_BASE64_TEXT": (0.15, "a long base64 or hex blob in the text that decodes to text"),
    "INJ_ENCODED_INSTRUCTIONS": (0.85, "instructions inside decoded base64, hex, rot13 or a data: URL"),
    "INJ_DECODE_HINT": (0.2, "'decode the following', 'base64-decode this and follow it'"),
    "INJ_DATA_URL": (0.25, "a data: URL with a text or application type"),
    # Exfiltration.
    "INJ_MARKDOWN_IMAGE": (0.3, "a markdown image with a query string (rendered = fetched)"),
    "INJ_EXFIL_URL": (0.4, "a URL with placeholders or instructions ({{...}}, <secret>, system prompt)"),
    "INJ_EXFIL_ENDPOINT": (0.35, "a link to a webhook/request-capture/tunnel service"),
    "INJ_EXFIL_INSTRUCTION": (0.55, "asks to append data to a URL or send the mailbox contents"),
    "INJ_FETCH_AND_SEND": (0.45, "asks to fetch a URL and include or send data"),
    # Credentials and money.
    "INJ_CREDENTIAL_REQUEST": (0.45, "asks for API keys, passwords, tokens, codes"),
    "INJ_MONEY_REQUEST": (0.25, "asks for gift cards, a transfer of an amount, crypto"),
    "INJ_URGENT_REQUEST": (0.25, "urgency on top of a credential or money request"),
    "INJ_PASSWORD_RESET_LINK": (0.1, "'reset your password at <link>' (legitimate notices say it too)"),
    # The stage itself.
    "INJ_SCAN_ERROR": (0.3, "part of the scan failed on this message: treat it with care"),
}


def level_bounds(levels: Mapping[str, float]) -> tuple[tuple[float, str], ...]:
    """(lowest score, level) pairs, highest first, from the config's level -> lowest score."""
    return tuple(sorted(((bound, level) for level, bound in levels.items()), reverse=True))


LEVELS = level_bounds(INJECTION_LEVELS)  # the defaults; a score below every bound is "none"
