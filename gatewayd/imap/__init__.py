"""IMAP: the watchers that turn new mail into events, and the rules' actions on it.

session.py     ImapSession: one connection over aioimaplib (SELECT, SEARCH, FETCH, IDLE, NOTIFY SET)
connect.py     connecting: TCP or implicit TLS, STARTTLS, login, capabilities
login.py       LOGIN with quoted strings, or AUTHENTICATE PLAIN
untagged.py    what the server says unasked: EXISTS counts, NOTIFY's STATUS; NOTIFY SET's events
errors.py      ImapError, its kinds and what lasts (how the watcher backs off); told without secrets
names.py       folder names: modified UTF-7, quoting, the key two names compare by
fetch.py       FETCH responses to messages; the messages a NOTIFY push brought
parts.py       the text parts a large message's prefix missed (bodystructure.py, response.py)
watch.py       FolderWatcher: the connection, IDLE loop, reconnect back-off, state events
sync.py        FolderSync: a folder's sync, UID checkpoint, exactly once, group commits, drain
status.py      WatcherState: what /healthz reports about a watcher
resync.py      after a UIDVALIDITY change: which messages are new
notify.py      AccountWatcher: several folders over one NOTIFY connection, or the fall-back
sent.py        SentLearner: the Sent folder's recipients learnt as correspondents
pool.py        WatcherPool: one watcher per (mailbox, folder), on-demand lifetimes
cancel.py      watcher tasks cancelled again until they end (3.11's wait_for may miss one)
act.py         the rules' IMAP actions over the watcher's connection (MOVE, COPY, STORE)
"""
