"""Header anomalies: the raw header block, Message-ID, recipients, Reply-To and Return-Path, the
subject, Received hops, the sending software's fingerprints and the From display name."""

from __future__ import annotations

import re

from gatewayd.message import ParsedMessage
from gatewayd.message.lowercase import lower
from gatewayd.pipeline.spam.addresses import address_of, domain_of, public_ip, site_of
from gatewayd.pipeline.spam.dates import date_signals
from gatewayd.pipeline.spam.symbols import Scorer

_MAX_RAW_HEADER_BYTES = 64 * 1024
_MAX_RECEIVED = 30


# The top-level headers read from the raw bytes (`message.headers` keeps only those the event
# needs): Received, MIME structure, priority, list headers, and Subject/From for 8-bit checks.
_RAW_NAMES = (
    *("Received", "Content-Type", "Content-Transfer-Encoding", "Subject", "From", "X-Priority"),
    *("X-MSMail-Priority", "List-Id", "List-Post", "MIME-Version", "X-Mailer", "X-MimeOLE"),
)
# The names as mail spells them, to their lower-cased keys: one lookup instead of two calls.
_NAME_KEYS = {
    spelling.encode(): lower(name)
    for name in _RAW_NAMES
    for spelling in (name, lower(name), name.title(), name.upper())
}


def _caseless_names(names: tuple[str, ...]) -> bytes:
    """The names as one case-insensitive alternation, grouped by first letter, which is a class
    ("[Rr](?i:eceived)"): the regex engine passes over a line's wrong groups by that class alone,
    where it would enter every "(?i:...)" alternative in turn (-13 % of the search's instructions)."""
    groups: dict[str, list[str]] = {}
    for name in map(str.lower, names):
        groups.setdefault(name[0], []).append(re.escape(name[1:]))
    return b"|".join(
        f"[{first.upper()}{first}](?i:{'|'.join(rests)})".encode() for first, rests in groups.items()
    )


# Matched in the unfolded block after a newline (one is prepended): with a literal first character
# the regex engine skips from line to line, where re.M's "^" has it try every position.
_RAW_HEADER = re.compile(rb"\n(" + _caseless_names(_RAW_NAMES) + rb")[ \t]*:([^\n]*)")
# The end of the header block, the first empty line; the CR of a CRLF before it is left to the
# last value, whose whitespace is stripped anyway. (Not "\r?\n\r?\n", for the literal first
# character.)
_HEADER_END = re.compile(rb"\n\r?\n")
# A line break and the whitespace that starts a continuation line, once CRLFs are LFs. A folded
# value becomes its lines joined by single spaces; other CRs become spaces too.
_FOLD = re.compile(rb"\n[ \t]+")


def raw_headers(raw: bytes) -> dict[str, list[bytes]]:
    """Lower-cased name -> unfolded raw values of the wanted top-level headers."""
    head = raw[:_MAX_RAW_HEADER_BYTES]
    end = _HEADER_END.search(head)
    if end:
        head = head[: end.start()]
    # Unfolded all at once: a substitution per value costs more than the scan.
    head = _FOLD.sub(b" ", b"\n" + head.replace(b"\r\n", b"\n"))
    stray_cr = b"\r" in head  # rare once CRLFs are LFs: most values need no replace then
    found: dict[str, list[bytes]] = {}
    for name, value in _RAW_HEADER.findall(head):
        key = _NAME_KEYS.get(name) or name.lower().decode("ascii")
        found.setdefault(key, []).append((value.replace(b"\r", b" ") if stray_cr else value).strip())
    return found


_FREEMAIL = frozenset(
    {
        *("gmail.com", "googlemail.com", "yahoo.com", "ymail.com", "hotmail.com", "outlook.com"),
        *("live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mail.com", "gmx.com", "gmx.net"),
        *("gmx.de", "web.de", "mail.ru", "yandex.ru", "yandex.com", "protonmail.com", "proton.me"),
        *("zoho.com", "qq.com", "163.com", "126.com", "rediffmail.com", "excite.com", "lycos.com"),
        *("netscape.net", "juno.com", "usa.net", "email.com", "hotmail.co.uk", "yahoo.co.uk"),
        *("yahoo.fr", "hotmail.fr", "libero.it", "btinternet.com", "sina.com", "tutanota.com"),
    }
)


def _is_freemail(domain: str | None) -> bool:
    return bool(domain) and (domain in _FREEMAIL or site_of(domain) in _FREEMAIL)


# Brands phishing names most, each with what its real sending domains contain.
_BRANDS: tuple[tuple[re.Pattern[str], tuple[str, ...]], ...] = tuple(
    (re.compile(pattern), tokens)
    for pattern, tokens in (
        (r"\bpaypal\b", ("paypal",)),
        (
            r"\bmicrosoft(?: 365)?\b|\boffice ?365\b|\boutlook\b",
            ("microsoft", "office", "outlook", "live.com"),
        ),
        (r"\bamazon\b", ("amazon",)),
        (r"\bapple\b|\bicloud\b", ("apple", "icloud")),
        (r"\bnetflix\b", ("netflix",)),
        (r"\bdocusign\b", ("docusign",)),
        (r"\bdropbox\b", ("dropbox",)),
        (r"\bwells ?fargo\b", ("wellsfargo", "wf.com")),
        (r"\bbank of america\b", ("bankofamerica", "bofa")),
        (r"\bamerican express\b|\bamex\b", ("americanexpress", "aexp", "amex")),
        (r"\bchase\b", ("chase",)),
        (r"\bdhl\b", ("dhl", "deutschepost")),
        (r"\bfedex\b", ("fedex",)),
        (r"\bups\b", ("ups",)),
        (r"\bcoinbase\b", ("coinbase",)),
        (r"\blinkedin\b", ("linkedin",)),
        (r"\bfacebook\b|\bmeta\b|\binstagram\b", ("facebook", "meta", "instagram")),
        (r"\bgoogle\b|\bgmail\b", ("google", "gmail", "youtube")),
        (r"\bebay\b", ("ebay",)),
        (r"\binternal revenue\b|\birs\b", ("irs.gov",)),
    )
)
# Any of them: most display names name no brand, and one search rules out all twenty.
_ANY_BRAND = re.compile("|".join(pattern.pattern for pattern, _ in _BRANDS))
# Words an impersonating display name wraps around the name it borrows ("PayPal Security",
# "Example IT Helpdesk"). A name with any other word ("Amazon Seller Tips by Jungle Scout") is not
# treated as impersonation: third parties name brands too.
_ROLE_WORDS = frozenset(
    """
    a access account accounts admin administrator alert alerts and at automated bank banking billing
    care center centre com compliance customer customers delivery department dept desk do document
    documents email e fax file files finance for fraud from help helpdesk hr id inc info information
    it login mail mailbox management member members message messages net no noreply not notice
    notification notifications notify of office official online org package parcel password payment
    payments payroll prevention protection reply resolution secure security server service services
    shared shipping sign staff storage support system systems team tech technical the tracking update
    updates verification voicemail webmail your
    """.split()  # noqa: SIM905 - a word list reads better as text
)
_NAME_WORD = re.compile(r"[a-z0-9]+")
_VIA = re.compile(r"\bvia\b")


def _only_role_words(name: str, borrowed: str) -> bool:
    """Whether `name` is `borrowed` plus role words only."""
    rest = name.replace(borrowed, " ", 1)
    return all(word in _ROLE_WORDS for word in _NAME_WORD.findall(rest))


_MSGID_SHAPE = re.compile(r"\s*<[^<>@\s]+@[^<>@\s]+>\s*")
ADDR_IN_TEXT = re.compile(r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,24}")
_ENCODED_WORD = re.compile(r"=\?[^?\s]{1,40}\?[bBqQ]\?[^?]{0,1000}\?=")
_RCVD_FROM = re.compile(r"from\s+(\S{1,255})\s+\(([^()]{0,500})\)", re.I)
_IPV4 = re.compile(r"\[?(\d{1,3}(?:\.\d{1,3}){3})\]?")
_IP_IN_PARENS = re.compile(r"\[(\d{1,3}(?:\.\d{1,3}){3})\]")
_RDNS = re.compile(r"\s*([A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,24})\s*\[")
_THROWAWAY = re.compile(r"[a-z0-9]{3,64}")
_THROWAWAY_MIX = re.compile(r"[a-z]\d+[a-z]+\d|\d{5}")
_PUNCT = re.compile(r"!!|\?!|!\?|\$\$")
_PADDED_TAG = re.compile(r"\S\s{8,}\S{1,60}\s*$")
# Self-labelled ads: "ADV:" (US state laws) and 未承諾広告 ("unsolicited ad", Japanese law).
_ADV_TAG = re.compile(r"^\W{0,3}adv\b\s*[:-]|未承諾広告", re.I)
_UNDISCLOSED = re.compile(r"undisclosed|unlisted|recipient list suppressed", re.I)
_HIGH_PRIORITY = re.compile(rb"^\s*[12]\b|\bhigh", re.I)


def header_signals(
    scorer: Scorer,
    message: ParsedMessage,
    heads: dict[str, list[bytes]],
    sender: str | None,
    mailbox_address: str | None,
) -> None:
    headers, data = message.headers, message.data
    received = [value.decode("latin-1") for value in heads.get("received", [])[:_MAX_RECEIVED]]
    date_signals(scorer, headers.get("date"), received)

    message_ids = headers.get("message-id")
    if not message_ids:
        scorer.add("MISSING_MID", "")
    elif not _MSGID_SHAPE.fullmatch(message_ids[0]):
        scorer.add("INVALID_MSGID", message_ids[0][:80])
    to = headers.get("to")
    if not to:
        scorer.add("MISSING_TO", "")
    elif _UNDISCLOSED.search(to[0]):
        scorer.add("RCPT_UNDISCLOSED", to[0][:80])
    elif not to[0].strip():
        scorer.add("TO_EMPTY", "")
    recipients = {domain_of(address_of(e)) for e in (data.get("to") or []) + (data.get("cc") or [])}
    recipients.discard(None)
    if len(recipients) >= 10:
        scorer.add("RCPT_MANY_DOMAINS", f"{len(recipients)} domains")
    priority = b" ".join(heads.get("x-priority", [])[:1] + heads.get("x-msmail-priority", [])[:1])
    if _HIGH_PRIORITY.search(priority):
        scorer.add("X_PRIORITY_HIGH", priority.decode("latin-1")[:40])

    from_domain = domain_of(sender)
    reply_to = [a for a in (address_of(e) for e in data.get("reply_to") or []) if a]
    # A mailing list's Reply-To naming the list is its normal shape.
    if from_domain and reply_to and not (heads.get("list-id") or heads.get("list-post")):
        other = [a for a in reply_to if site_of(domain_of(a)) != site_of(from_domain)]
        if other:
            scorer.add("REPLYTO_DOM_NEQ_FROM_DOM", f"{from_domain} vs {domain_of(other[0])}")
        # Not when From names the same mailbox: a person's own freemail, or a mailer's rewrite of
        # a freemail sender's From ("joe=gmail.com@mail.example").
        local = (sender or "").partition("@")[0]
        free = [
            a
            for a in reply_to
            if _is_freemail(domain_of(a))
            and site_of(domain_of(a)) != site_of(from_domain)
            and a.partition("@")[0] not in local
        ]
        if free:
            scorer.add("FREEMAIL_REPLYTO", free[0])
    return_path = ADDR_IN_TEXT.search((data.get("headers") or {}).get("return-path") or "")
    if from_domain and return_path and site_of(domain_of(return_path.group(0))) != site_of(from_domain):
        scorer.add("FROM_NEQ_RETURN_PATH", f"{from_domain} vs {domain_of(return_path.group(0))}")

    local = (sender or "").partition("@")[0]
    if _is_freemail(from_domain) and _THROWAWAY.fullmatch(local) and _THROWAWAY_MIX.search(local):
        scorer.add("FREEMAIL_FROM_RANDOM", sender or "")

    name = (data.get("from") or {}).get("name") if isinstance(data.get("from"), dict) else None
    if name and sender:
        _display_name_signals(scorer, name, sender, mailbox_address)

    for header in ("subject", "from"):
        for value in heads.get(header, [])[:1]:
            if not value.isascii():
                try:
                    value.decode("utf-8")  # RFC 6532 allows raw UTF-8
                except UnicodeDecodeError:
                    scorer.add("HEADER_8BIT", header)
                    break
    decoded = [data.get("subject") or "", name or ""]
    if any(_ENCODED_WORD.search(value) for value in decoded):
        scorer.add("BAD_ENCODED_WORD", next(v for v in decoded if _ENCODED_WORD.search(v))[:80])

    subject = data.get("subject") or ""
    # An ASCII subject with a lower-case letter is not in capitals: most are ruled out at once.
    if not (subject.isascii() and subject.upper() != subject):
        letters = "".join(filter(str.isalpha, subject))
        if len(letters) >= 10 and len(subject.split()) >= 3 and all(map(str.isupper, letters)):
            scorer.add("SUBJ_ALL_CAPS", subject[:80])
    if _PUNCT.search(subject):
        scorer.add("SUBJ_EXCESS_PUNCT", subject[:80])
    raw_subject = heads.get("subject", [b""])[0].decode("latin-1")
    if _PADDED_TAG.search(raw_subject):
        scorer.add("SUBJ_PADDED", raw_subject.strip()[:80])
    if _ADV_TAG.search(subject):
        scorer.add("SUBJ_ADV_TAG", subject[:80])

    lies: dict[str, str] = {}
    for text in received:
        match = _RCVD_FROM.match(text)
        if not match:
            continue
        claimed, seen = lower(match.group(1)), match.group(2)
        # Most HELOs are names, and name no big provider: the other searches are made only when
        # their finding is possible.
        if helo := _IPV4.fullmatch(claimed):
            # "from 192.0.2.7 (HELO name)" names the peer, not its HELO; webmail and proxies write
            # their HTTP client's address there.
            if claimed[0] != "[" and public_ip(helo.group(1)) and not _NOT_A_HELO.search(text, 0, 300):
                lies.setdefault("RCVD_NUMERIC_HELO", f"HELO {claimed[:40]}")
            # A private HELO behind NAT is normal; a public one that is not the peer is a lie.
            relay = _IP_IN_PARENS.search(seen)
            if relay and helo.group(1) != relay.group(1) and public_ip(helo.group(1)):
                lies.setdefault("RCVD_HELO_IP_MISMATCH", f"HELO {helo.group(1)} from {relay.group(1)}")
        # The big providers' own relays resolve into their own domains.
        rdns = _RDNS.match(seen) if site_of(claimed) in _FREEMAIL else None
        if rdns and site_of(lower(rdns.group(1))) != site_of(claimed):
            lies.setdefault("RCVD_HELO_FORGED", f"HELO {claimed[:60]} from {rdns.group(1)[:60]}")
    for symbol, detail in lies.items():
        scorer.add(symbol, detail)
    _mailer_signals(scorer, message, heads)


# Outlook and Outlook Express write an X-MimeOLE header (up to Outlook 2002) and their own
# Message-ID: <counter + high FILETIME word $ low word $ ...@host>, whose high word starts 01b..01e
# from 1986 to 2043. Spamware that borrows the X-Mailer gets these wrong: no X-MimeOLE, a
# Message-ID its relay had to add, random hex, or a version string Outlook never wrote.
_OUTLOOK_MSGID = re.compile(r"\s*<[0-9a-f]{12}\$[0-9a-f]{8}\$[0-9a-f]{8}\$?@", re.I)
_OUTLOOK_MSGID_TIME = re.compile(r"\s*<[0-9a-f]{4}01[b-e]", re.I)
# Message-IDs that relays write for mail that came without one: sendmail, Postfix, Exim.
_MTA_MSGID = re.compile(
    r"\s*<(?:\d{12}\.[A-Za-z0-9]{6,16}|\d{14}\.[0-9A-F]{6,14}|E1[0-9A-Za-z]{5}-[0-9A-Za-z]{6}-[0-9A-Za-z]{2})@"
)
# Exchange 5.5's Internet Mail Service writes <32 or more hex digits@host>.
_EXCHANGE_MSGID = re.compile(r"\s*<[0-9A-F]{24,}@", re.I)
_OUTLOOK_BAD_VERSION = re.compile(r"\d ?dm\b|\bdemo\b|\d+(?:\.\d+){4}|outlook (?:imo )?build")
# Bulk mailers sold for spamming. Not the tools small organisations send their own newsletters
# with (GroupMail, SendBlaster and the like): a legitimate sender may use those.
_BULK_MAILER = re.compile(
    r"\b(?:easy ?dm|quick ?sender|atlas ?mailer|send-?safe|advanced mass sender|dark ?mailer"
    r"|stealth (?:mass )?mailer|mailking)\b",
    re.I,
)
_RANDOM_TOKEN = re.compile(r"(?=[A-Za-z0-9]{10,40}$)(?=.*\d).*[a-z][A-Z]{2}")
_NOT_A_HELO = re.compile(r"\((?:helo|ehlo)\b|authenticated|proxying|webmail|squirrelmail|http", re.I)
_MIME_TOP = re.compile(rb"\s*(?:multipart/|text/html|application/|image/|message/)", re.I)


def _mailer_signals(scorer: Scorer, message: ParsedMessage, heads: dict[str, list[bytes]]) -> None:
    """The sending software's fingerprints, checked against what the message claims it is."""
    mailer = b"".join(heads.get("x-mailer", [])[:1])[:200].decode("latin-1").strip()
    message_id = (message.headers.get("message-id") or [""])[0][:200]
    lowered = lower(mailer)
    if _BULK_MAILER.search(mailer) or _RANDOM_TOKEN.match(mailer):
        scorer.add("X_MAILER_BULK", mailer[:80])
    elif lowered.startswith("internet mail service") and not _EXCHANGE_MSGID.match(message_id):
        scorer.add("FORGED_MUA", f"{mailer[:60]}: not an Exchange Message-ID")
    elif "outlook" in lowered and "microsoft" in lowered and "mac" not in lowered:
        why = ""
        if "express" in lowered and not heads.get("x-mimeole"):
            why = "no X-MimeOLE"
        elif _OUTLOOK_BAD_VERSION.search(lowered):
            why = "malformed version"
        elif _MTA_MSGID.match(message_id):
            why = "Message-ID written by a relay"
        if why:
            scorer.add("FORGED_MUA", f"{mailer[:60]}: {why}")
    if _OUTLOOK_MSGID.match(message_id) and not _OUTLOOK_MSGID_TIME.match(message_id):
        scorer.add("MSGID_FORGED_OE", message_id[:80])
    top = b" ".join(heads.get("content-type", [])[:1])
    if _MIME_TOP.match(top) and not heads.get("mime-version"):
        scorer.add("MIME_NO_VERSION", top.decode("latin-1")[:60])
    sender = address_of(message.data.get("from"))
    if sender and "=?" in sender:
        scorer.add("FROM_ADDR_ENCODED", sender[:80])


def _display_name_signals(scorer: Scorer, name: str, sender: str, mailbox_address: str | None) -> None:
    lowered = " ".join(lower(name).split())
    domain = domain_of(sender) or ""
    shown = [lower(a) for a in ADDR_IN_TEXT.findall(name)]
    # "jane@example.com via Help Center": help desks and forms relay for the person they name.
    if any(a != sender for a in shown) and not _VIA.search(lowered):
        scorer.add("FROM_NAME_HAS_ADDR", f"{name[:60]} <{sender}>")
    own = site_of(domain_of(mailbox_address))
    if own and not _is_freemail(own):
        org = own.split(".")[0]
        # "example.com" anywhere, or the bare org name dressed in role words ("Example IT Support").
        named = own in lowered or (org in lowered and len(org) >= 3 and _only_role_words(lowered, org))
        if named and org not in domain:
            scorer.add("FROM_NAME_IMPERSONATES_RCPT", f"{name[:60]} <{sender}>")
    if not _ANY_BRAND.search(lowered):
        return
    for pattern, tokens in _BRANDS:
        match = pattern.search(lowered)
        if not match or any(token in domain for token in tokens):
            continue
        if _only_role_words(lowered, match.group(0)):
            scorer.add("FROM_NAME_BRAND", f"{name[:60]} <{sender}>")
            break
