"""What the spam stage learns from reports: Bayes token counts, spam signatures, sender reputation.

One SQLite file (WAL) per tenant holds it all: a tenant's reports and sent mail teach only its own
mailboxes (`TenantLearning` picks the store by mailbox). `LearningStore` is what
`gatewayd.pipeline.spam` calls through its `Learning` protocol, from worker threads
(`asyncio.to_thread`) and from `gatewayd learn`.

- Bayes: Robinson's per-token probabilities combined with Fisher's chi-square, as in SpamBayes and
  SpamAssassin's Bayes. A message counts each token once. It only gives a score once at least
  `min_training` spam and `min_training` ham were trained: a Bayes trained on a few dozen messages
  is confidently wrong.
- Signatures: TLSH of the normalised body of every message reported as spam. A near duplicate of a
  reported spam (same template, other names, numbers or tracking links) is within a small distance.
  TLSH is steady from about 1 KB of text; on shorter bodies a few changed words can move the hash
  far, so those match only when nearly identical (a missed match, never a false one). A ham report
  removes every signature it matches: someone wants that text after all.
- Reputation: ham/spam reports per lower-cased From address (over the tenant's mailboxes and per
  mailbox), and whether a mailbox has written to the address (its auto-replies and forwards, and
  the mail in its Sent folder: gatewayd.imap.sent, with how far that folder was read).

Training is rare and scoring is hot: token counts, signatures and sender reports live in memory
(senders: about 15 MB per 100,000), loaded at open, and every `train` writes through to SQLite in
the same call. Another process training the same
file (the CLI while the daemon runs) is noticed through `PRAGMA data_version` within a second and
the memory is reloaded (the daemon does it in a thread of its own, scoring with the old counts
meanwhile). Training a message twice changes nothing; training it under the other
label moves it (un-learn, then learn), like `sa-learn`. Un-learning tokenises the message again,
so counts are clamped at zero should the tokeniser have changed in between. Nothing expires yet:
the 3,000 messages of the SpamAssassin corpus make 40,000 tokens, 6 MB in memory, 1.3 MB on disk.

The corpus of 2002 munged its owner's addresses to spamassassin.taint.org and carries fetchmail
`Received` lines in ham and spam alike; no token here comes from `Received` headers, and tokens
and sender addresses naming those artefacts are not learned (657 of its ham come "from"
rssfeeds@spamassassin.taint.org). A deployment's own relays cannot become spam evidence either.

store.py       LearningStore: scoring from memory, training, reloading another process's training
persistence.py the SQLite file: schema, training's writes, a snapshot of it all; SentMark
tokens.py      tokenize: header features, subject words, link and address domains, body words
bayes.py       the token counts in memory and the cache of what each token says
combine.py     Robinson's token probabilities, Fisher's chi-square combining
signatures.py  normalise_body, the TLSH signature of a body, message_digest, header_end
nearest.py     the spam signatures in memory, bucketed by TLSH length, and the nearest search
senders.py     sender reputation in memory, by mailbox and address
tenants.py     TenantLearning: one store per tenant, chosen by mailbox; tenant_path
train.py       learn_from_dirs: training from folders of labelled messages (`gatewayd learn`)
"""

from gatewayd.pipeline.learning.combine import MAX_CLUES, MIN_TOKEN_STRENGTH, chi2_combine
from gatewayd.pipeline.learning.persistence import SentMark
from gatewayd.pipeline.learning.signatures import message_digest, normalise_body, signature
from gatewayd.pipeline.learning.store import HAM, LABELS, SPAM, LearningStore
from gatewayd.pipeline.learning.tenants import TenantLearning, tenant_path
from gatewayd.pipeline.learning.tokens import ARTEFACTS, MAX_TOKENS, tokenize
from gatewayd.pipeline.learning.train import learn_from_dirs

__all__ = [
    "ARTEFACTS",
    "HAM",
    "LABELS",
    "MAX_CLUES",
    "MAX_TOKENS",
    "MIN_TOKEN_STRENGTH",
    "SPAM",
    "LearningStore",
    "SentMark",
    "TenantLearning",
    "chi2_combine",
    "learn_from_dirs",
    "message_digest",
    "normalise_body",
    "signature",
    "tenant_path",
    "tokenize",
]
