"""The symbols the spam stage reports, their default weights, and how its findings combine.

Precision first: a false positive hides real mail from an agent. Signals come in two kinds:
- anomalies legitimate senders do not produce (impossible dates, forged Received hops, links to
  IP addresses, advance-fee phrasing, executables, an X-Mailer the rest of the message belies),
  weighted on their own;
- traits legitimate bulk mail shares with spam (HTML-only, promotional and urgent phrasing, a
  hidden preheader, click trackers, capitals, exclamations, loud fonts), listed in SOFT. Together
  these add at most SOFT_CAP, below the default spam threshold: a newsletter, however loud, needs
  an anomaly on top to be called spam. Unsubscribe footers, many links and tracking pixels are no
  signal.
The two kinds combine (see CORROBORATING): beside an anomaly that only spamware or a forger
produces, the soft findings count double, still up to SOFT_CAP (SOFT_CORROBORATED), and two
different such anomalies add MULTI_ANOMALY. The loudest newsletter with one such anomaly scores
as before; quieter spam with one now reaches the threshold too.
The weights were set by hand for that structure, tuned on the even-numbered files of the
SpamAssassin corpus of 2002, checked on the odd ones and on hand-written modern mail
(tests/data/spam/); see bench/spam_eval.py. No signal keys on that corpus's artefacts (its
munged addresses, fetchmail hops, relays or list names).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum

from gatewayd.pipeline import Finding


class Verdict(StrEnum):
    HAM = "ham"
    SUSPECT = "suspect"
    SPAM = "spam"


# Symbol -> (default weight, what it means). A finding's score is its weight times a factor in
# (0, 1] for the graded ones, or times the number of distinct hits for the phrase families.
SYMBOLS: dict[str, tuple[float, str]] = {
    # Sender lists and learning.
    "ALLOWLIST": (-100.0, "From address on the allowlist"),
    "BLOCKLIST": (100.0, "sender on the blocklist"),
    "BAYES_SPAM": (6.0, "token classifier says spam (half weight at p > 0.9)"),
    "BAYES_HAM": (-3.0, "token classifier says ham (half weight at p < 0.1)"),
    "FUZZY_SIGNATURE": (8.0, "body fuzzy-matches a reported spam"),
    "REPUTATION_SENT_TO": (-6.0, "this mailbox has written to the sender"),
    "REPUTATION_HAM": (-3.0, "sender's earlier mail was ham (full weight from 5 messages)"),
    "REPUTATION_SPAM": (4.0, "sender's earlier mail was spam (full weight from 5 messages)"),
    # Header anomalies. Legitimate mailers get these right.
    "MISSING_DATE": (2.0, "no Date header"),
    "INVALID_DATE": (3.5, "Date unparsable or with an impossible zone"),
    "DATE_IN_PAST": (2.5, "Date long before the message's own earliest Received"),
    "DATE_IN_FUTURE": (3.0, "Date after the message's own latest Received"),
    "MISSING_MID": (2.0, "no Message-ID header"),
    "INVALID_MSGID": (2.0, "Message-ID not of the form <left@right>"),
    "RCPT_UNDISCLOSED": (1.5, "To: undisclosed recipients"),
    "TO_EMPTY": (1.5, "a To header without any address"),
    "X_PRIORITY_HIGH": (1.0, "sender marked the message high priority"),
    "FREEMAIL_REPLYTO": (2.0, "replies go to a freemail address other than From"),
    "FREEMAIL_FROM_RANDOM": (1.5, "a throwaway-looking freemail sender (digits mixed into the name)"),
    "FROM_NAME_IMPERSONATES_RCPT": (3.5, "display name names the receiving domain, address does not"),
    "FROM_NAME_HAS_ADDR": (1.5, "display name holds an address other than the sender's"),
    "FROM_NAME_BRAND": (3.5, "display name names a brand the address domain does not"),
    "HEADER_8BIT": (1.5, "raw 8-bit bytes in Subject/From that are not UTF-8"),
    "BAD_ENCODED_WORD": (1.5, "an RFC 2047 encoded word that does not decode"),
    "SUBJ_PADDED": (4.0, "subject padded with spaces before a trailing tag (hash buster)"),
    "SUBJ_ADV_TAG": (4.0, "subject labelled as an advertisement (ADV:, 未承諾広告)"),
    "RCVD_HELO_FORGED": (3.0, "a Received hop's HELO names a big mail provider its host is not part of"),
    "RCPT_MANY_DOMAINS": (1.5, "To/Cc list 10 or more domains openly (bulk mail uses Bcc)"),
    "RCVD_HELO_IP_MISMATCH": (1.5, "a Received hop's HELO is a public IP other than the connecting one"),
    "RCVD_NUMERIC_HELO": (2.0, "a Received hop's HELO is a bare public IP (RFC 5321 wants [brackets])"),
    "FORGED_MUA": (3.5, "X-Mailer claims Outlook, but the message lacks what Outlook writes"),
    "MSGID_FORGED_OE": (3.0, "an Outlook-style Message-ID whose timestamp part is impossible"),
    "X_MAILER_BULK": (3.0, "X-Mailer names a bulk-mailing program, or is a random token"),
    "MIME_NO_VERSION": (2.5, "MIME structure (HTML, multipart) without a MIME-Version header"),
    "FROM_ADDR_ENCODED": (3.0, "an RFC 2047 encoded word inside the From address itself"),
    # Header traits legitimate bulk mail shares (soft, see SOFT).
    "MISSING_TO": (0.3, "no To header"),
    "REPLYTO_DOM_NEQ_FROM_DOM": (0.5, "Reply-To domain differs from From domain"),
    "FROM_NEQ_RETURN_PATH": (0.1, "Return-Path domain differs from From (normal for bulk mail)"),
    "SUBJ_ALL_CAPS": (1.5, "subject in capitals"),
    "SUBJ_EXCESS_PUNCT": (1.5, "subject with !!, ?! or $$"),
    # Content that legitimate mail does not have.
    "URL_IP_LITERAL": (4.0, "link to a public IP address"),
    "URL_USERINFO": (5.0, "link with user@ before the host (http://bank.com@evil/)"),
    "HTML_PASSWORD_FIELD": (5.0, "an HTML form asking for a password"),
    "HASH_BUSTER": (4.0, "the random tag a family of bulk mailers adds to defeat checksums"),
    "SCAM_PHRASES": (3.0, "advance-fee, pharma or bulk-mail disclaimer phrasing, per phrase (up to 3)"),
    "ATTACH_DANGEROUS": (5.0, "an executable or script attachment"),
    "ATTACH_DOUBLE_EXT": (5.0, "an attachment name with a disguising double extension"),
    # Content traits legitimate newsletters and notices share (soft, see SOFT).
    "URL_SHORTENER": (2.0, "link through a URL shortener"),
    "LINK_TEXT_MISMATCH": (3.0, "link text names a domain other than where the link goes"),
    "HTML_IMAGE_ONLY": (3.0, "HTML with images and almost no text"),
    "HTML_HIDDEN_TEXT": (3.0, "text hidden by CSS or colour (half weight below 150 characters)"),
    "HTML_ONLY": (1.5, "HTML without a text alternative"),
    "HTML_FORM": (1.5, "an HTML form in the body"),
    "HTML_LOUD_FONTS": (1.5, "several <font> tags in huge sizes or glaring red"),
    "BASE64_TEXT": (1.5, "text body sent base64-encoded"),
    "BODY_SHOUTING": (3.0, "most words in capitals (half weight from 25%, full from 40%)"),
    "BODY_EXCLAIM": (2.0, "many exclamations (half weight from 6, full from 10)"),
    "SPAM_PHRASES": (1.5, "classic spam phrasing, per distinct phrase (up to 5)"),
    "MONEY_PHRASES": (1.5, "money phrasing, per distinct phrase (up to 4)"),
    "URGENCY_PHRASES": (1.5, "urgency and hard-sell phrasing, per distinct phrase (up to 3)"),
    "CREDENTIAL_PHRASES": (2.0, "asks to verify or update an account, per phrase (up to 3)"),
    # Evidence that combines the others (see CORROBORATING and combine).
    "SOFT_CORROBORATED": (1.0, "soft findings count this much more (still up to SOFT_CAP) beside spamware"),
    "MULTI_ANOMALY": (3.0, "two or more different spamware anomalies (see CORROBORATING)"),
}
# Symbols that legitimate bulk mail also shows (newsletters, notices, receipts). Together they add
# at most SOFT_CAP, so no mail reaches the default spam threshold without some anomaly that
# legitimate senders do not produce.
SOFT = frozenset(
    {
        *("MISSING_TO", "REPLYTO_DOM_NEQ_FROM_DOM", "FROM_NEQ_RETURN_PATH", "SUBJ_ALL_CAPS"),
        *("SUBJ_EXCESS_PUNCT", "URL_SHORTENER", "LINK_TEXT_MISMATCH", "HTML_IMAGE_ONLY"),
        *("HTML_HIDDEN_TEXT", "HTML_ONLY", "HTML_FORM", "BASE64_TEXT", "BODY_SHOUTING", "BODY_EXCLAIM"),
        *("HTML_LOUD_FONTS",),
        *("SPAM_PHRASES", "MONEY_PHRASES", "URGENCY_PHRASES", "CREDENTIAL_PHRASES"),
    }
)
SOFT_CAP = 7.0
# Anomalies that only spamware and forgers produce: mailer fingerprints that contradict the
# message, checksum busters, deceptive links and names. Beside one of them the soft findings are no
# longer a newsletter's loudness and count double (SOFT_CORROBORATED), still up to SOFT_CAP, so that
# the loudest newsletter with one such anomaly scores as it did, and quieter spam with one reaches
# the threshold too. Weak or ambiguous anomalies (a high priority, a date off by days, a bare-IP
# HELO, advance-fee phrasing that news also quotes) do not corroborate. Two different ones, or one
# and a bare-IP HELO (ratware's habit), add MULTI_ANOMALY: legitimate mail shows none of them.
CORROBORATING = frozenset(
    {
        *("INVALID_DATE", "FORGED_MUA", "MSGID_FORGED_OE", "X_MAILER_BULK", "FROM_ADDR_ENCODED"),
        *("HASH_BUSTER", "SUBJ_PADDED", "SUBJ_ADV_TAG", "RCVD_HELO_FORGED", "URL_IP_LITERAL"),
        *("URL_USERINFO", "HTML_PASSWORD_FIELD", "FROM_NAME_BRAND", "FROM_NAME_IMPERSONATES_RCPT"),
    }
)
_SECOND_ANOMALY = CORROBORATING | {"RCVD_NUMERIC_HELO"}


class Scorer:
    def __init__(self, weights: Mapping[str, float]) -> None:
        self.weights = weights
        self.findings: list[Finding] = []

    def weight(self, symbol: str) -> float:
        return self.weights.get(symbol, SYMBOLS[symbol][0])

    def add(self, symbol: str, detail: str, factor: float = 1.0) -> None:
        weight = self.weight(symbol)
        if weight and factor:
            self.findings.append(Finding(symbol, weight * factor, detail[:200]))


def combine(scorer: Scorer) -> list[Finding]:
    """The findings with the soft ones scaled down together to at most SOFT_CAP, plus
    SOFT_CORROBORATED (also within SOFT_CAP) and MULTI_ANOMALY beside CORROBORATING anomalies."""
    findings = scorer.findings
    backers = [f.symbol for f in findings if f.symbol in CORROBORATING and f.score > 0]
    anomalies = {f.symbol for f in findings if f.symbol in _SECOND_ANOMALY and f.score > 0}
    multi = scorer.weight("MULTI_ANOMALY")
    if backers and len(anomalies) >= 2 and multi:
        findings = [*findings, Finding("MULTI_ANOMALY", multi, ", ".join(sorted(anomalies))[:200])]
    soft = sum(f.score for f in findings if f.symbol in SOFT and f.score > 0)
    if soft <= 0:
        return findings
    if soft > SOFT_CAP:
        ratio = SOFT_CAP / soft
        findings = [
            Finding(f.symbol, f.score * ratio, f.detail) if f.symbol in SOFT and f.score > 0 else f
            for f in findings
        ]
    more = scorer.weight("SOFT_CORROBORATED")
    if backers and more > 0:
        extra = min(soft * (1 + more), SOFT_CAP) - min(soft, SOFT_CAP)
        if extra > 0:
            findings = [*findings, Finding("SOFT_CORROBORATED", extra, f"beside {backers[0]}")]
    return findings
