"""Content signals: phrase families and fraud sums, capitals and exclamations, links, HTML tricks
and attachments."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator
from typing import Any

from gatewayd.message import ParsedMessage
from gatewayd.message.lowercase import lower
from gatewayd.pipeline.spam.addresses import domain_of, public_ip, site_of
from gatewayd.pipeline.spam.html import HtmlFacts, base64_text, has_plain_part, walk_html
from gatewayd.pipeline.spam.symbols import Scorer

TEXT_SCAN_CHARS = 64 * 1024
HTML_SCAN_CHARS = 64 * 1024


def _trie_pattern(phrases: Iterable[str], space: str = r"\s+") -> str:
    """One regex alternation shaped as a trie: far faster than a flat list of alternatives. A
    space in a phrase becomes `space`."""
    trie: dict[str, Any] = {}
    for phrase in phrases:
        node = trie
        # A run of spaces is one \s+: "\s+\s+\s+" ("dear sir / madam" spaced) backtracks through a
        # run of white space in cubic time (64 KB of it after "dear sir": minutes in a worker thread).
        for char in re.sub(" {2,}", " ", phrase):
            node = node.setdefault(char, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        branches = [
            (space if char == " " else re.escape(char)) + build(child)
            for char, child in sorted(node.items())
            if char
        ]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        return f"(?:{body})?" if "" in node else body

    return build(trie)


# Phrases in lower case; a space matches any whitespace. Only phrases that legitimate mail
# rarely uses: no "free", "unsubscribe", "offer", "% off" (newsletters and receipts use them).
_PHRASES: dict[str, tuple[str, ...]] = {
    # Advance-fee fraud, pharma, and the self-justifications of unsolicited bulk mail.
    "SCAM_PHRASES": (
        *("next of kin", "transfer the fund", "transfer the funds", "transfer the sum"),
        *("transfer of the sum", "foreign partner", "foreign account", "business proposal"),
        *("strictest confidence", "strict confidence", "utmost confidentiality"),
        *("absolute confidentiality", "over-invoiced", "over invoiced", "atm card", "unclaimed funds"),
        *("compensation fund", "diplomatic courier", "consignment box", "dear beneficiary"),
        *("winning notification", "fiduciary agent", "million united states dollars", "million us dollars"),
        *("late husband", "my late father", "on exile", "political asylum", "central bank of nigeria"),
        *("abacha", "security company abroad", "trunk box", "overseas partner", "foreign business partner"),
        *("trustworthy partner", "utmost secrecy", "absolute secrecy", "crave your indulgence"),
        *("solicit your assistance", "solicit your strictest", "beneficiary of the fund"),
        *("inheritance fund", "dormant account", "of the total sum", "winning numbers", "lucky winner"),
        *("claim your winnings", "viagra", "cialis", "levitra", "online pharmacy", "no prescription"),
        *("penis enlargement",),
        # Unsolicited bulk mail justifying itself; a newsletter someone subscribed to has no need.
        *("this is not spam", "this is not a spam", "this is not junk", "this is not unsolicited"),
        *("not unsolicited", "cannot be considered spam", "email address was obtained"),
        *("address was obtained from", "section 301", "s. 1618", "s.1618", "remove in the subject"),
        *("remove in subject", "remove as the subject", "reply with remove", "the word remove"),
        *("no removal is necessary", "type remove", "one time mailing", "one-time mailing"),
        *("millions of email addresses", "email addresses for sale"),
    ),
    "SPAM_PHRASES": (
        *("click here", "click below", "100% free", "absolutely free", "free gift", "free access"),
        *("you have won", "you've won", "you have been selected", "you've been selected"),
        *("congratulations", "claim your prize", "claim your reward", "weight loss", "lose weight"),
        *("diet pill", "diet pills", "herbal", "casino", "hot singles", "meet singles", "no obligation"),
        *("no cost", "risk free", "risk-free", "satisfaction guaranteed", "100% guaranteed"),
        *("special promotion", "miracle", "as seen on", "dear friend", "dear sir", "dear madam"),
        *("dear sir/madam", "dear sir / madam", "dear sir or madam", "dear valued customer"),
        *("dear account holder", "no experience necessary"),
        *("downline", "be your own boss", "multi-level marketing", "network marketing", "increase sales"),
        *("increase your sales", "no hidden", "why pay more", "compare rates", "amazing offer"),
        *("incredible offer", "cash advance", "unsecured", "fill out the form", "erection"),
        # The opt-out wording of unsolicited bulk mail (newsletters say "unsubscribe").
        *("to be removed", "remove me", "removal instructions", "wish to be removed"),
        *("do not wish to receive", "opt-out", "opt out", "removed from our list"),
        *("removed from this list", "removed from our mailing list", "removed from this mailing list"),
        *("removed from future mailings", "removal link"),
        # Selling bulk mail: spam then, an email-marketing vendor's newsletter now.
        *("opt-in list", "bulk email", "mass email", "targeted email"),
    ),
    "MONEY_PHRASES": (
        *("million dollars", "wire transfer", "bank account", "investment opportunity", "extra income"),
        *("financial freedom", "earn money", "cash bonus", "double your money", "double your income"),
        *("home based business", "home-based business", "work from home", "work at home"),
        *("mortgage rates", "lower your mortgage", "refinance", "credit card debt", "eliminate debt"),
        *("eliminate your debt", "consolidate your debt", "debt consolidation", "no credit check"),
        *("bad credit", "pennies a day", "save up to", "lowest rates", "lowest price", "lowest prices"),
        *("free quote", "guaranteed income", "residual income", "business opportunity"),
        *("money back guarantee", "money-back guarantee", "cash prize", "earn extra", "offshore account"),
        *("lottery", "jackpot", "western union", "moneygram", "penny stock", "hot stock", "stock pick"),
        *("stock picks", "huge profits", "profit potential", "processing fee"),
    ),
    "URGENCY_PHRASES": (
        *("act now", "act fast", "act immediately", "limited time", "urgent", "urgently"),
        *("expires today", "offer expires", "don't delay", "do not delay", "order now", "order today"),
        *("call now", "call today", "apply now", "respond now", "reply now", "within 24 hours"),
        *("within 48 hours", "final notice", "last chance", "while supplies last"),
        *("once in a lifetime", "don't miss out", "immediate action", "today only", "time sensitive"),
        *("time-sensitive",),
    ),
    "CREDENTIAL_PHRASES": (
        *("verify your account", "verify your identity", "verify your information"),
        *("confirm your account", "confirm your identity", "confirm your password"),
        *("update your account", "update your payment", "update your billing", "unusual activity"),
        *("suspicious activity", "unauthorized access", "login credentials", "reactivate your account"),
        *("restore your account", "validate your account", "social security number"),
        *("account has been suspended", "account will be suspended", "account has been locked"),
        *("account will be closed", "account has been limited", "account will be terminated"),
        *("password will expire", "password expires", "mailbox is full", "mailbox quota"),
        *("failure to comply", "failure to verify", "failure to update", "re-enter your"),
    ),
}
# Quotes and stars dropped before phrase matching: reply with "REMOVE", **100% FREE**. (One
# str.replace each: str.translate looks every character up in a dict, ten times slower.)
_QUOTES = ('"', "*", "\u201c", "\u201d")
_PHRASE_FAMILY = {phrase: family for family, phrases in _PHRASES.items() for phrase in phrases}
_PHRASE_RE = re.compile(r"(?<![\w$])" + _trie_pattern(_PHRASE_FAMILY) + r"(?!\w)")
# A search for _PHRASE_RE tries it at every position, most of what phrase matching costs. Where it
# can match is found first in a copy of the text with every character other than ASCII word
# characters and "$" made a space (the phrases likewise): there a phrase follows a space, a literal
# the regex engine skips to. The copy is bytes, one translate: latin-1 with "?" for the rest keeps
# one byte per character. Every real match start is such a candidate (the copy only merges
# characters the pattern does not tell apart, and ones no phrase contains), and _PHRASE_RE checks
# each candidate itself.
_PHRASE_SPACES = bytes(c if c < 128 and (chr(c).isalnum() or chr(c) in "_$") else 0x20 for c in range(256))
_SPACED_PHRASES = {phrase.encode().translate(_PHRASE_SPACES).decode() for phrase in _PHRASE_FAMILY}
# Its only white space is " ": a possessive " ++" (a phrase has no space after a space, so giving
# one back never helps) is counted without backtracking. The lookahead turns most of the spaces
# away with one class test: those before another space or a character no phrase starts with.
_PHRASE_FIRSTS = re.escape("".join(sorted({phrase[0] for phrase in _SPACED_PHRASES})))
_SPACED_TRIE = _trie_pattern(_SPACED_PHRASES, " ++")
_PHRASE_CANDIDATE = re.compile(f" (?=[{_PHRASE_FIRSTS}]){_SPACED_TRIE}(?!\\w)".encode())
_PHRASE_CAPS = {
    "SCAM_PHRASES": 3,
    "SPAM_PHRASES": 5,
    "MONEY_PHRASES": 4,
    "URGENCY_PHRASES": 3,
    "CREDENTIAL_PHRASES": 3,
}
# Patterns searched through a whole text start with a literal character or one character class:
# the regex engine then skips to where they can start instead of trying every position. What
# comes before that character is checked by a lookbehind after it ("\b\d" is "\d(?<!\w\d)").
#
# The sums advance-fee fraud spells out ("US$18,000,000", "20 million US dollars"); news and
# company newsletters quote "$4 million" and "$1,200,000", which only count as money phrasing.
_FRAUD_SUMS = (
    re.compile(r"us\$(?<!\wus\$)\s?\d{1,3}(?:,\d{3}){2,}"),
    re.compile(
        r"\d(?<!\w\d)\d{0,3}(?:[.,]\d{1,3})?\s?(?:million|billion)\s+(?:us\s+|united\s+states\s+)?(?:dollars|usd)\b"
    ),
)
_BIG_SUM = re.compile(r"\$\s?\d{1,3}(?:,\d{3}){2,}(?:\.\d\d)?(?!\d)")
# The tag a family of bulk mailers appends to subject and body so that no two copies have the same
# checksum: "5297gdqK6-498jyxl3033RafD3-195RTcz...". Only that shape: random tokens in general are
# everywhere in legitimate mail (password-reset links, confirmation codes, tracking ids). Searched
# from its "-", the part before it captured by the lookbehind.
_HASH_BUSTER = re.compile(r"-(?<=(\d{4}[A-Za-z]{4}\d)-)\d{3}[A-Za-z]")
_WORD = re.compile(r"[^\W\d_]{3,}")
# Text as UTF-8 for _words: ASCII letters kept, other ASCII bytes (which no word has) made spaces,
# the bytes of other characters kept.
_WORD_BYTES = bytes(c if c >= 128 or chr(c).isalpha() else 0x20 for c in range(256))
# The same with every kept byte an "a": runs are counted, not made.
_WORD_BYTES_AS_A = bytes(0x61 if c >= 128 or chr(c).isalpha() else 0x20 for c in range(256))
_CAPITALS = bytes(range(ord("A"), ord("Z") + 1))
_OTHER_BYTE = re.compile(rb"[\x80-\xff]")
_FEW_OTHER_BYTES = 256  # see _runs_with_others
_EXCLAIM = re.compile(r"!(?<=\w!)")  # "\w!", from the "!" (see _FRAUD_SUMS)
_URL = re.compile(r"(?:https?://|www\.)[^\s<>\"'(){}\[\]]{1,2000}", re.I)
# Where _URL can start: 4 or 5 characters before a "://" that ends "http://" or "https://", or at a
# "www." in any case (looked for in a lower-cased copy, one byte per character). Literals the regex
# engine skips to, where a search for _URL itself stops at every "h" and "w"; the lookbehinds
# (case-insensitive, as _URL is) keep a text of bare "://" from costing a Python step per one.
_SCHEME_END = re.compile(r"://(?:(?<=https://)|(?<=http://))", re.I)
_WWW = re.compile(rb"www\.")
_HOST_END = re.compile(r"[/?#\\]")
_WEB_LINK = re.compile(r"\s*(?:https?:)?//|\s*www\.", re.I)
_SHORTENERS = frozenset(
    {
        *("bit.ly", "tinyurl.com", "goo.gl", "t.co", "ow.ly", "is.gd", "buff.ly", "rebrand.ly"),
        *("cutt.ly", "shorturl.at", "tiny.cc", "rb.gy", "t.ly", "bl.ink", "s.id", "v.gd", "qr.co"),
        *("adf.ly", "shorte.st", "clck.ru", "lnkd.in", "x.co", "soo.gd", "bitly.com", "short.io"),
    }
)
_DANGEROUS_EXT = frozenset(
    {"exe", "scr", "js", "jse", "vbs", "vbe", "bat", "cmd", "jar", "iso", "lnk", "hta", "pif", "com"}
    | {"msi", "ps1", "wsf", "cpl", "img"}
)
_DOCUMENT_EXT = frozenset({"pdf", "doc", "docx", "xls", "xlsx", "txt", "jpg", "jpeg", "png", "gif", "zip"})


def content_signals(
    scorer: Scorer, message: ParsedMessage, heads: dict[str, list[bytes]], sender: str | None
) -> None:
    text = message.text[:TEXT_SCAN_CHARS]
    subject = message.data.get("subject") or ""
    lowered = lower(f"{subject}\n{text}")
    for quote in _QUOTES:
        lowered = lowered.replace(quote, "")
    _phrase_signals(scorer, lowered)
    buster = _HASH_BUSTER.search(subject) or _HASH_BUSTER.search(text)
    if buster:
        scorer.add("HASH_BUSTER", buster.group(1) + buster.group(0))

    words, caps = _words(text)
    if words >= 30:
        ratio = caps / words
        if ratio >= 0.25:
            scorer.add("BODY_SHOUTING", f"{ratio:.0%} of words in capitals", 1.0 if ratio >= 0.4 else 0.5)
    # Never more matches than "!" characters: most mail is decided by the count alone.
    exclaims = len(_EXCLAIM.findall(text)) if text.count("!") >= 6 else 0
    if exclaims >= 6:
        scorer.add("BODY_EXCLAIM", f"{exclaims} exclamations", 1.0 if exclaims >= 10 else 0.5)

    html = message.html[:HTML_SCAN_CHARS] if message.html else None
    walk = walk_html(html) if html else HtmlFacts()
    hosts = [_url_host(url) for url in _urls(text)]
    hosts += [_url_host(href) for href, _ in walk.links if _WEB_LINK.match(href)]
    _url_signals(scorer, [h for h in hosts if h is not None], walk, domain_of(sender))

    if html:
        if walk.images and words < 15:
            scorer.add("HTML_IMAGE_ONLY", f"{walk.images} images, {words} words")
        if walk.loud_fonts >= 2:
            scorer.add("HTML_LOUD_FONTS", f"{walk.loud_fonts} loud <font> tags")
        if walk.hidden_chars >= 40:
            factor = 1.0 if walk.hidden_chars >= 150 else 0.5
            scorer.add("HTML_HIDDEN_TEXT", f"{walk.hidden_chars} hidden characters", factor)
        if walk.password_field:
            scorer.add("HTML_PASSWORD_FIELD", "")
        elif walk.form:
            scorer.add("HTML_FORM", "")
        if not has_plain_part(message, heads):
            scorer.add("HTML_ONLY", "")
    if base64_text(message.raw, heads):
        scorer.add("BASE64_TEXT", "")

    for attachment in message.data.get("attachments") or []:
        filename = lower(attachment.get("filename") or "").strip().rstrip(".")
        parts = filename.rsplit(".", 2)
        if len(parts) >= 2 and parts[-1] in _DANGEROUS_EXT:
            scorer.add("ATTACH_DANGEROUS", filename[:100])
            if len(parts) == 3 and parts[-2] in _DOCUMENT_EXT:
                scorer.add("ATTACH_DOUBLE_EXT", filename[:100])
            break


def _words(text: str) -> tuple[int, int]:
    """How many words (_WORD: runs of 3 or more letters) the text has, and how many of them are in
    capitals; the capitals are counted only when they could be a quarter of the words (the least
    BODY_SHOUTING needs), else given as 0.

    On bytes, where translates and counts do in C what _WORD does a character at a time: runs of
    ASCII letters are words as they are, and only the few runs with other characters (accents,
    curly quotes, other scripts) are left to _WORD.
    """
    data = text.encode("utf-8", "surrogatepass")
    mixed = [] if text.isascii() else _runs_with_others(data.translate(_WORD_BYTES), len(data) - len(text))
    others = _WORD.findall(b" ".join(mixed).decode("utf-8", "surrogatepass")) if mixed else []
    # Runs of three bytes or more are words, except the mixed ones: those count for _WORD's words.
    count = (b" " + data.translate(_WORD_BYTES_AS_A)).count(b" aaa")
    words = count - sum(len(run) >= 3 for run in mixed) + len(others)
    other_caps = sum(map(str.isupper, others))
    # A word in ASCII capitals has three at least: most text has too few to look further.
    if 4 * (len(data) - len(data.translate(None, _CAPITALS))) + 12 * other_caps < 3 * words:
        return words, 0
    ascii_words = [run for run in data.translate(_WORD_BYTES).split() if len(run) >= 3 and run.isascii()]
    return words, sum(map(bytes.isupper, ascii_words)) + other_caps


def _runs_with_others(runs: bytes, other_bytes: int) -> list[bytes]:
    """The space-separated runs that have bytes of non-ASCII characters: looked up one by one when
    there are few such bytes, else picked out of all the runs (text in another script)."""
    if other_bytes > _FEW_OTHER_BYTES:
        return list(itertools.filterfalse(bytes.isascii, runs.split()))
    found = []
    end = 0
    while other := _OTHER_BYTE.search(runs, end):
        end = runs.find(b" ", other.end())
        end = len(runs) if end < 0 else end
        found.append(runs[runs.rfind(b" ", 0, other.start()) + 1 : end])
    return found


def _phrase_matches(lowered: str) -> Iterator[re.Match[str]]:
    """What _PHRASE_RE.finditer(lowered) yields, found faster (see _PHRASE_CANDIDATE)."""
    spaced = b" " + lowered.encode("latin-1", "replace").translate(_PHRASE_SPACES)
    position = 0
    # Searched again from each candidate's next character: a real match may start inside one.
    while candidate := _PHRASE_CANDIDATE.search(spaced, position):
        start = candidate.start()  # the space before the phrase, which is where the phrase is in `lowered`
        position = start + 1
        if match := _PHRASE_RE.match(lowered, start):
            position = max(position, match.end())
            yield match


def _phrase_signals(scorer: Scorer, lowered: str) -> None:
    hits: dict[str, set[str]] = {}
    for count, match in enumerate(_phrase_matches(lowered)):
        if count >= 200:
            break
        phrase = " ".join(match.group(0).split())
        hits.setdefault(_PHRASE_FAMILY[phrase], set()).add(phrase)
    # The first fraud sum in the text. The second kind's search stops at every digit: it only runs
    # when the text has the millions or billions it needs, from 9 characters before the first (the
    # most a sum can take).
    # The first kind and _BIG_SUM need a "$": most text has none, found at memchr's speed.
    dollar = "$" in lowered
    frauds = [_FRAUD_SUMS[0].search(lowered)] if dollar else []
    millions = [i for i in (lowered.find("million"), lowered.find("billion")) if i >= 0]
    if millions:
        frauds.append(_FRAUD_SUMS[1].search(lowered, max(min(millions) - 9, 0)))
    fraud = min((m for m in frauds if m), key=re.Match.start, default=None)
    big_sum = _BIG_SUM.search(lowered) if dollar else None
    for sum_, family in ((fraud, "SCAM_PHRASES"), (big_sum, "MONEY_PHRASES")):
        if sum_:
            hits.setdefault(family, set()).add(" ".join(sum_.group(0).split()))
    for family, found in hits.items():
        cap = _PHRASE_CAPS[family]
        scorer.add(family, ", ".join(sorted(found)[:cap]), min(len(found), cap))


def _urls(text: str) -> list[str]:
    """_URL.findall(text), with _URL tried only where it can start (see _SCHEME_END)."""
    starts = [scheme.start() - length for scheme in _SCHEME_END.finditer(text) for length in (5, 4)]
    starts += [www.start() for www in _WWW.finditer(text.encode("latin-1", "replace").lower())]
    urls = []
    end = 0
    for start in sorted(starts):
        if start >= end and (url := _URL.match(text, start)):
            urls.append(url.group(0))
            end = url.end()
    return urls


def _url_host(url: str) -> str | None:
    """The host of a web link; prefixed with "@" when a domain-like user part precedes it, the
    trick that makes http://www.bank.example@evil.example/ look like the bank's."""
    rest = url.split("://", 1)[1] if "://" in url[:10] else url
    authority = _HOST_END.split(rest, 1)[0]
    userinfo, _, hostport = authority.rpartition("@")
    host = lower(hostport.partition(":")[0].strip("."))
    return ("@" + host if "." in userinfo else host) or None


def _url_signals(scorer: Scorer, hosts: list[str], walk: HtmlFacts, sender_domain: str | None) -> None:
    for host in hosts:
        bare = host.lstrip("@")
        if host.startswith("@") and "." in bare:
            scorer.add("URL_USERINFO", bare)
            break
    for host in hosts:
        if public_ip(host.lstrip("@")):
            scorer.add("URL_IP_LITERAL", host.lstrip("@"))
            break
    for host in hosts:
        if host.lstrip("@") in _SHORTENERS:
            scorer.add("URL_SHORTENER", host.lstrip("@"))
            break
    for href, label in walk.links:
        shown = _LABEL_DOMAIN.search(label)
        target = _url_host(href) if shown and _WEB_LINK.match(href) else None
        if not shown or not target:
            continue
        target = target.lstrip("@")
        site = site_of(lower(shown.group(1))) or ""
        # Newsletters route links through their own or their mailer's click tracker, which is
        # named after them (brand.list-manage.com, click.brand-mail.com) or sends the mail.
        if (
            site == site_of(target)
            or site.split(".")[0] in target
            or site_of(target) == site_of(sender_domain)
        ):
            continue
        scorer.add("LINK_TEXT_MISMATCH", f"{shown.group(1)} -> {target}")
        break


# A domain written as link text: "paypal.com", "www.bank.example/login", "https://x.example".
_LABEL_DOMAIN = re.compile(
    r"^\s*(?:https?://)?((?:[a-z0-9-]{1,63}\.){1,8}"
    r"(?:com|net|org|edu|gov|info|biz|app|dev|online|shop|store|site|xyz|top|[a-z]{2}))(?:[/:?#\s]|$)",
    re.I,
)
