"""The prompt-injection stage: score text a stranger wrote to manipulate the agent reading the mail.

The readers of these events are AI agents, so the threat is not the human kind of spam but text
aimed at the model: orders to drop its instructions, fake chat or tool markup, text a human would
never see (hidden HTML, comments, zero-width and tag characters), payloads in base64 for the model
to decode, links that smuggle data out, and requests for the agent's credentials or money.

Every signal is a named symbol with a weight in [0, 1] (rspamd-style, overridable in config); the
score is 1 - prod(1 - weight), so one strong signal ("ignore previous instructions" in hidden text)
is near 1 and many weak ones add up. The stage also provides `sanitized_excerpt`: the start of the
body as a human sees it (the visible HTML text when there is HTML, else the text body), without
invisible characters and hidden HTML text; None when nothing is visible.

Text is scanned in channels: visible (subject, display names and attachment file names, which the
event carries too, text body, visible HTML text), hidden (hidden HTML text, alt/title attributes,
Unicode tag characters), HTML comments, and decoded payloads. The instruction rules run on every
channel; a hit outside the visible one adds the channel's own symbol. Before matching, text is
folded: invisible characters dropped, NFKD without accents, Cyrillic/Greek lookalikes mapped to
Latin, lower case; a second, letters-only form with light leetspeak undone catches "i g n o r e",
"ign.ore" and "1gn0re"; text a right-to-left override shows reversed is also read in the order it
appears on screen. HTML visibility follows inline styles, `hidden`, <template>, and stylesheet rules
for plain tag, .class and #id selectors.

Precision matters as in the spam stage: a sysadmin's "System:" log line, code, newsletters and a
password-reset notice stay none. Mail that quotes "ignore previous instructions" (a security
discussion, a README note) scores medium: the phrase alone is 0.7, and it is the attack itself.
On the 2,500 SpamAssassin ham messages no symbol fires at all; spam stays none or low.

Input is hostile: text and HTML are capped, every regex is linear (no nested unbounded
quantifiers; word gaps are bounded), a rule's regex only runs when its gate words are present and
only where str.find finds the literal text it starts with, and the HTML is walked once by a
tokenizer in the style of `html_to_text` in `gatewayd/message/html.py` (never the stdlib HTMLParser,
quadratic on hostile input in 3.11). A failure inside one part of the scan becomes an INJ_SCAN_ERROR
finding, never an exception.

symbols.py       the symbols, their default weights and meanings; the levels
limits.py        the caps on the work done per message
stage.py         InjectionStage, InjectionOptions; the scorer, and the scan of one message (and of each
                 attached text file, forwarded message and inline text part past the body) by channel
characters.py    invisible, zero-width, bidi and tag characters, lookalikes; folding, collapsing, snippets
rules.py         the rule machinery: patterns and their literal starts, gates, the rule index
phrases.py       the rule tables: word rules in several languages, rules for other scripts (Cyrillic,
                 CJK, Arabic), letters-only and markup rules, urgency, role lines
instructions.py  the rules run on one text: its lower-cased, folded and letters-only forms
html.py          one walk over the HTML: visible and hidden text, comments, attributes, URLs
css.py           colours, lengths, declarations, and what a style hides
payloads.py      URLs, exfiltration hosts and placeholders, data: URLs, base64 and hex blobs
"""

from gatewayd.pipeline.injection.characters import INVISIBLE, strip_invisible
from gatewayd.pipeline.injection.limits import MAX_HTML_CHARS, MAX_SUBJECT_CHARS, MAX_TEXT_CHARS
from gatewayd.pipeline.injection.stage import InjectionOptions, InjectionStage
from gatewayd.pipeline.injection.symbols import LEVELS, SYMBOLS

__all__ = [
    "INVISIBLE",
    "LEVELS",
    "MAX_HTML_CHARS",
    "MAX_SUBJECT_CHARS",
    "MAX_TEXT_CHARS",
    "SYMBOLS",
    "InjectionOptions",
    "InjectionStage",
    "strip_invisible",
]
