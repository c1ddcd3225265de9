"""When an automatic reply must not be sent (RFC 3834), and where one goes.

An auto-reply is refused, with the reason in the event, to a message that is:

- itself automatic: `Auto-Submitted` other than `no`, `X-Auto-Response-Suppress` (All, AutoReply,
  OOF), a delivery or disposition report (`multipart/report`), or a null Return-Path (a bounce);
- bulk, junk or from a list: `Precedence: bulk|list|junk`, `List-Id` / `List-Post` /
  `List-Unsubscribe` / `List-Help`, the `$Junk` keyword, or a folder named like a junk folder;
- from mailer-daemon, postmaster, no-reply style and list-robot addresses, whether the From or the
  reply target is one (a no-reply From often comes with a VERP bounce Return-Path), sub-address
  (`+tag`) aside; or with a reply target that is not one plain ASCII address (`<MAILER-DAEMON>`,
  `a@x.org,b@y.org`, ESMTP parameters, line breaks);
- from, or to be answered at, the mailbox's own address (sub-address aside), or already looped
  through it (`X-Loop`);
- given a spam verdict (`spam` or `suspect`), or failed authentication (auth verdict `fail`);
- one on which these checks cannot be made: headers not all read (longer than 256 KiB, cut by the fetch,
  or beyond the parser: a header that would refuse the reply may be in the rest), a From or Reply-To
  cut short (the address the reply goes to may be the one lost), or a spam or
  authentication stage that failed on the message (its keys null: it may be spam, or forged).
  A stage that is not configured gives no verdict, and refuses nothing.

The reply goes to the (topmost) Return-Path (the envelope sender, RFC 3834 section 4), else the Reply-To,
else the From address. "One auto-reply per sender per period" counts against both the From address
and that target: an SRS or VERP Return-Path differs for every message from the same sender.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from gatewayd.rules.facts import Facts, is_auto_submitted, is_bulk

_ROBOTS = re.compile(
    r"(?i)^(mailer-daemon|postmaster|.*no[-_.]?reply.*|.*do[-_.]?not[-_.]?reply.*|bounces?|listserv"
    r"|majordomo|mailman|owner-.*|.*-(request|bounces?|owner)|abuse|root|daemon|nobody)$"
)
_ANGLE = re.compile(r"<([^<>]*)>")
# What a reply may go to: one plain ASCII address (dot-atom @ host name), since it becomes both the
# SMTP recipient, sent without SMTPUTF8, and the To header. Anything else a sender wrote there (a
# second address after a comma, ESMTP parameters, line breaks) would not be one recipient.
_REPLY_ADDRESS = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
_LIST_HEADERS = ("list-id", "list-post", "list-unsubscribe", "list-help")
_JUNK_FOLDERS = ("junk", "spam", "junk e-mail", "junk email", "bulk mail")


def _return_path(facts: Facts) -> str | None:
    """The envelope sender: "" for a null one (`<>`), None when the header is missing.

    The delivering server puts it on top; one further down came with the message, from its sender.
    """
    values = facts.header("return-path")
    if not values:
        return None
    match = _ANGLE.search(values[0])
    return (match.group(1) if match else values[0]).strip()


def _address(entry: Any) -> str | None:
    if isinstance(entry, dict) and isinstance(entry.get("address"), str) and entry["address"]:
        return str(entry["address"])
    return None


def reply_target(facts: Facts) -> str | None:
    """Where an automatic reply goes; None when there is nowhere (a bounce, no sender)."""
    return_path = _return_path(facts)
    if return_path is not None:
        return return_path or None
    reply_to = [a for e in facts.data.get("reply_to") or [] if (a := _address(e))]
    if reply_to:
        return reply_to[0]
    return _address(facts.data.get("from"))


def reply_limited(facts: Facts, target: str) -> tuple[str, ...]:
    """The addresses a reply to `target` counts against: the target, and the sender (From)."""
    sender = _address(facts.data.get("from"))
    if sender is None or sender.lower() == target.lower():
        return (target,)
    return (target, sender)


def refuse_automatic(facts: Facts, own_address: str | None) -> str | None:
    """Why no automatic mail may answer or forward this message (loops), or None."""
    if is_auto_submitted(facts):
        return "the message is itself automatic (Auto-Submitted)"
    suppress = " ".join(facts.header("x-auto-response-suppress")).lower()
    if any(word in suppress for word in ("all", "autoreply", "oof")):
        return "the sender asks for no automatic replies (X-Auto-Response-Suppress)"
    content_type = " ".join(facts.header("content-type")).lower()
    if "multipart/report" in content_type:
        return "the message is a delivery or disposition report"
    if own_address and any(own_address.lower() in v.lower() for v in facts.header("x-loop")):
        return "the message already passed through this mailbox (X-Loop)"
    return _unread_headers(facts)


def _unread_headers(facts: Facts) -> str | None:
    """Checked after the headers were looked up: a parser failure is known only then."""
    partial = facts.headers_partial()
    return f"the message's headers were not all read ({partial})" if partial else None


def refuse_reply(facts: Facts, own_address: str | None, target: str | None) -> str | None:
    """Why an auto-reply to this message is not allowed (RFC 3834), or None when it is."""
    if reason := refuse_automatic(facts, own_address):
        return reason
    for name in ("reply-to", "from"):  # where the reply may go, and the sender it is counted against
        if why := facts.parsed_cut(name):
            return f"the message's {name} header was not all read ({why})"
    if _return_path(facts) == "":
        return "the message is a bounce (null Return-Path)"
    if target is None:
        return "the message has no sender to reply to"
    if is_bulk(facts):
        return "the message is bulk or junk (Precedence)"
    if any(facts.has(name) for name in _LIST_HEADERS):
        return "the message is from a mailing list"
    flags = [str(f).lower() for f in facts.data.get("flags") or []]
    folder = str(facts.data.get("folder") or "").lower().rpartition("/")[2]
    if "$junk" in flags or "junk" in flags or folder in _JUNK_FOLDERS:
        return "the message is in junk"
    if not _REPLY_ADDRESS.fullmatch(target):
        return f"{target!r} is not an address to reply to"
    sender = _address(facts.data.get("from"))
    for address in (target, sender):
        if address is not None and _ROBOTS.match(_base(address).rpartition("@")[0]):
            return f"{address} is a robot address (mailer-daemon, postmaster, no-reply, list robots)"
    own = _base(own_address or "")
    if own and own in (_base(target), _base(sender or "")):
        return "the message is from this mailbox's own address"
    if reason := _unread_headers(facts):  # the lookups above may have met a parser failure
        return reason
    for stage in ("spam", "auth"):
        if stage in facts.data and facts.data[stage] is None:
            return f"the {stage} stage failed on this message: its verdict is unknown"
    spam = _section(facts.data, "spam")
    if spam.get("verdict") in ("spam", "suspect"):
        return f"the spam verdict is {spam.get('verdict')}"
    if _section(facts.data, "auth").get("verdict") == "fail":
        return "the message failed authentication"
    return None


def _base(address: str) -> str:
    """The address without its sub-address, lower-cased: `Bounces+x=y.org@Z.net` -> `bounces@z.net`."""
    local, at, domain = address.lower().rpartition("@")
    return local.partition("+")[0] + at + domain if at else address.lower()


def _section(data: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = data.get(name)
    return value if isinstance(value, dict) else {}
