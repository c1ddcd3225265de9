"""The spam stage: untrained heuristics, sender lists, and the learned signals when there are any.

Every signal is a named symbol (rspamd-style) with a default weight that `options.weights` can
override; the verdict comes from the summed score and the two thresholds. The heuristics fall in
four families: header anomalies, sender reputation (allow/block lists and the learning store),
content (links, HTML tricks, phrasing, attachments) and known spam signatures (learning store).

Everything runs on hostile input: header and text scans are capped, the HTML is walked once
with `str.find` (no regex that can backtrack across the document), and phrase lists are one
trie-shaped regex.

symbols.py    the symbols, their weights and meanings; Scorer, and how soft findings combine
stage.py      SpamStage, SpamOptions, verdict_for; sender lists and the learning store's signals
headers.py    the raw header block; header, Received, mailer and display-name anomalies
dates.py      Date against the message's own Received stamps
content.py    phrases, fraud sums, capitals, exclamations, links and attachments
html.py       one walk over the HTML and its facts; rough scans of the MIME structure
addresses.py  addresses, registrable domains and public IP literals
"""

from gatewayd.pipeline.spam.stage import Learning, SpamOptions, SpamStage, verdict_for
from gatewayd.pipeline.spam.symbols import CORROBORATING, SOFT, SOFT_CAP, SYMBOLS, Verdict

__all__ = [
    "CORROBORATING",
    "SOFT",
    "SOFT_CAP",
    "SYMBOLS",
    "Learning",
    "SpamOptions",
    "SpamStage",
    "Verdict",
    "verdict_for",
]
