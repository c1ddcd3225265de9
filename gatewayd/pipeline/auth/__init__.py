"""Sender authentication: SPF, DKIM and DMARC as the receiving server recorded them.

The receiving MTA writes its verdicts into `Authentication-Results` (RFC 8601). Anyone can write that
header too, so only headers whose authserv-id is trusted for the mailbox count; every other one is
reported (AUTH_RESULTS_UNTRUSTED, score 0) and otherwise ignored. Of several trusted headers only the
topmost (the most recent) is used: servers prepend their headers, so a forged copy carrying a trusted id
sits below the real one. Merging several trusted headers would let such a copy fill in a method the
real header left out (Gmail omits `dkim` for unsigned mail), so setups where several milters each write
a header under the same id see only the topmost one. A trusted header that cannot be parsed stops the
search: the headers below it are not used either. A header without an authserv-id (Microsoft 365
writes them so) is trusted only where the trusted list holds the literal `(none)`.

Verdict: `unknown` without a trusted header; else `pass` on DMARC pass, `fail` on DMARC fail or when
the message is unauthenticated (below), `pass` when an aligned SPF or DKIM identifier passed, `none`
otherwise. A DMARC result whose `header.from` is not the From domain shown is left out of the verdict
(the server read another From header or address), and a From naming two domains is `none` at best.

Unauthenticated (the event becomes `message.received.unauthenticated`), from the trusted header plus
any local DKIM results: SPF is `fail` or `softfail`, no DKIM result is `pass`, and either some DKIM
result is `fail` or `permerror` (a signature that is there but does not verify), or the message carries
no DKIM result besides `none` and DMARC is `fail`. Unsigned mail with a failing SPF and no failing DMARC
is therefore not flagged: plenty of small domains send exactly that.

Alignment with the From domain is relaxed (same organisational domain) and reported as `strict` when
the domains are identical. The organisational domain is approximated without the Public Suffix List:
the last two labels, or the last three when the last two are a common two-level public suffix
(`co.uk`, `com.au`, ...). For a suffix not listed (`pvt.k12.ma.us`) two unrelated registrants look
aligned; the receiving server's own DMARC result, which takes precedence, uses the real list.

Optionally (`dkim_verify`) the DKIM signatures are verified here too with dkimpy, in a worker thread
under a DNS budget; these entries carry `"source": "local"`. A verified signature that leaves unsigned
part of what the agent is shown (body past `l=`, a shown header added above the signed copy) is
`policy`: the sender can write anything there.

Impersonation (FROM_LOOKALIKE_DOMAIN, FROM_DISPLAY_NAME_ADDRESS) is reported whatever the results
say, and leaves the verdict alone: the results prove the domain, not the reader's reading of it.

results.py    Authentication-Results (RFC 8601): the parser, its tokenizer, finding the headers
domains.py    organisational domains and alignment with the From domain
lookalike.py  lookalikes of a mailbox's protected domains or hidden in a longer one, display names naming
              another domain
stage.py      AuthStage, AuthOptions, the symbols and their scores; trust, verdict and findings
dkim.py       the optional local DKIM verification (dkimpy, DNS lookups under a budget)
"""

from gatewayd.pipeline.auth.domains import alignment, organizational_domain
from gatewayd.pipeline.auth.results import UnparsableHeader, parse_authentication_results
from gatewayd.pipeline.auth.stage import SYMBOLS, UNAUTHENTICATED, AuthOptions, AuthStage

__all__ = [
    "SYMBOLS",
    "UNAUTHENTICATED",
    "AuthOptions",
    "AuthStage",
    "UnparsableHeader",
    "alignment",
    "organizational_domain",
    "parse_authentication_results",
]
