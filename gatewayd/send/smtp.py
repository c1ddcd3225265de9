"""One SMTP delivery over aiosmtplib, through a mailbox's `smtp:` server, with an honest verdict.

What matters after a failure is whether the mail may have been delivered anyway:

- `sent`: the server accepted the data (some recipients may have been refused: see `error`);
- `retry`: it certainly was not delivered and trying later may help (network trouble before the
  data, a 4xx reply);
- `failed`: it was not delivered and will not be (a 5xx reply, a refused login);
- `unknown`: the connection broke or timed out while the server had the data: it may have been
  delivered, so it is never sent again (an auto-reply must not go out twice).

A delivery cancelled (a shutdown) raises CancelledError; its `Progress` tells the caller which of
`retry` and `unknown` it is. The server may have the mail from the DATA command on: RFC 5321 has
it take the mail at the final dot and drop a transaction cut off before (section 3.8), and
aiosmtplib sends the message with its dot the moment the 354 arrives, a moment it does not show.

An address that is not ASCII goes out with SMTPUTF8 (RFC 6531) when the server offers it; to one
that does not, or an address that is not even valid text, it is `failed` before any MAIL.

Anything else that goes wrong (a bug, a surprise from the library) is `failed` before the data, or
`unknown` from the data on, and logged with its traceback: an exception escaping would leave the
outbox's item `sending`, neither retried nor reported.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib

from gatewayd.config import TLS_IMPLICIT, TLS_STARTTLS, SmtpConfig
from gatewayd.store.journal import FAILED, RETRY, SENT, UNKNOWN
from gatewayd.tls import client_context

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SendResult:
    status: str  # sent | retry | failed | unknown
    error: str | None = None


# Phases of a delivery: from DATA on the server may have the mail; at DONE it took it.
DATA = "data"
DONE = "done"


@dataclass(slots=True)
class Progress:
    """How far a delivery got: the command it is at, or DONE."""

    phase: str = "connect"

    def cut_off(self, why: str) -> SendResult:
        """The verdict on a delivery that ended here without its answer (lost, timed out,
        cancelled): cancelled while saying QUIT, it was sent."""
        if self.phase == DONE:
            return SendResult(SENT)
        if self.phase == DATA:
            return SendResult(
                UNKNOWN, f"{self.phase}: {why}; not sent again (it may have been delivered)"[:300]
            )
        return SendResult(RETRY, f"{self.phase}: {why}"[:300])


def tls_context(config: SmtpConfig) -> ssl.SSLContext:
    return client_context(config.ca_file, config.verify_cert)


async def send(
    config: SmtpConfig,
    envelope_from: str,
    recipients: Sequence[str],
    message: bytes,
    timeout: float | None = None,
    progress: Progress | None = None,
) -> SendResult:
    """Deliver `message` to `recipients`; never raises but CancelledError, after which `progress`
    says how far it got (see the module docstring for the verdicts).

    `timeout` bounds the whole delivery, QUIT included (default: `config.timeout_seconds`).
    """
    smtp: aiosmtplib.SMTP | None = None
    progress = progress if progress is not None else Progress()
    deadline = asyncio.get_running_loop().time() + (timeout or config.timeout_seconds)
    try:
        smtp = aiosmtplib.SMTP(
            hostname=config.host,
            port=config.port,
            use_tls=config.tls == TLS_IMPLICIT,
            # Never the automatic upgrade: "none" means none, "starttls" means it is required.
            start_tls=config.tls == TLS_STARTTLS,
            # Read at every attempt: a CA file gone or broken since start-up fails this one (OSError).
            tls_context=tls_context(config) if config.tls != "none" else None,
            timeout=config.timeout_seconds,
        )
        async with asyncio.timeout_at(deadline):
            return await _deliver(smtp, config, envelope_from, recipients, message, progress)
    except aiosmtplib.SMTPAuthenticationError as exc:
        return SendResult(FAILED, f"login refused: {exc.code} {exc.message}"[:300])
    except aiosmtplib.SMTPResponseException as exc:
        status = RETRY if 400 <= exc.code < 500 else FAILED
        return SendResult(status, f"{progress.phase}: {exc.code} {exc.message}"[:300])
    except aiosmtplib.SMTPNotSupported as exc:
        return SendResult(FAILED, f"{progress.phase}: {exc}"[:300])
    except UnicodeError as exc:  # a name aiosmtplib sends as ASCII (the local host name in EHLO)
        return SendResult(FAILED, f"{progress.phase}: cannot encode: {exc}"[:300])
    except (aiosmtplib.SMTPException, OSError, TimeoutError, ssl.SSLError) as exc:
        # Cut off while the server had the data: it may have been delivered.
        return progress.cut_off(str(exc) or type(exc).__name__)
    except Exception as exc:
        log.error("smtp: unexpected error at %s", progress.phase, exc_info=exc)
        # A surprise repeats when retried; from the data on, the mail may have gone out.
        status = UNKNOWN if progress.phase in (DATA, DONE) else FAILED
        # As text the journal stores whatever it quotes (undecodable header bytes are surrogates).
        detail = f"{type(exc).__name__}: {exc}".encode("utf-8", "backslashreplace").decode("utf-8")
        return SendResult(status, f"{progress.phase}: unexpected error: {detail}"[:300])
    finally:
        if smtp is not None:
            await _hang_up(smtp, deadline)


async def _hang_up(smtp: aiosmtplib.SMTP, deadline: float) -> None:
    """QUIT politely if time is left; a stalled server is simply disconnected, and so is it when
    cancelled meanwhile (a watcher stopped is cancelled again until it ends)."""
    if not smtp.is_connected:
        return
    try:
        async with asyncio.timeout_at(min(deadline, asyncio.get_running_loop().time() + 2)):
            await smtp.quit()
    except Exception:
        pass
    finally:
        smtp.close()  # after a QUIT answered, closed already


async def _deliver(
    smtp: aiosmtplib.SMTP,
    config: SmtpConfig,
    envelope_from: str,
    recipients: Sequence[str],
    message: bytes,
    progress: Progress,
) -> SendResult:
    await smtp.connect()
    if config.username is not None and config.password is not None:
        progress.phase = "login"
        await smtp.login(config.username, config.password.reveal())
    progress.phase = "mail"
    addresses = [envelope_from, *recipients]
    if unencodable := [a for a in addresses if not _valid_text(a)]:
        return SendResult(FAILED, f"mail: {unencodable[0]!r} is not an address SMTP can carry"[:300])
    options: list[str] = []
    encoding = "ascii"
    if not all(a.isascii() for a in addresses):
        if smtp.is_ehlo_or_helo_needed:
            await smtp.ehlo()  # what the server offers is known only after it
        if not smtp.supports_extension("smtputf8"):
            wide = next(a for a in addresses if not a.isascii())
            return SendResult(FAILED, f"mail: the server does not offer SMTPUTF8, needed for {wide}"[:300])
        options, encoding = ["SMTPUTF8"], "utf-8"
    await smtp.mail(envelope_from, options=options, encoding=encoding)
    progress.phase = "rcpt"
    refused: list[tuple[str, int, str]] = []
    for recipient in recipients:
        try:
            await smtp.rcpt(recipient, encoding=encoding)
        except aiosmtplib.SMTPRecipientRefused as exc:
            refused.append((recipient, exc.code, exc.message))
    if len(refused) == len(recipients):
        temporary = all(400 <= code < 500 for _, code, _ in refused)
        text = "; ".join(f"{rcpt}: {code} {why}" for rcpt, code, why in refused)
        return SendResult(RETRY if temporary else FAILED, f"rcpt: {text}"[:300])
    progress.phase = DATA
    await smtp.data(message)
    progress.phase = DONE
    if refused:
        text = "; ".join(f"{rcpt}: {code} {why}" for rcpt, code, why in refused)
        return SendResult(SENT, f"refused: {text}"[:300])
    return SendResult(SENT)


def _valid_text(address: str) -> bool:
    """Whether the address is text UTF-8 can carry: one from an undecodable header holds
    surrogate escapes of its raw bytes."""
    try:
        address.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
