"""A throwaway Dovecot on loopback for the demo, the tests and the benchmarks.

It never touches the system instance: its own config, base_dir, state and mail live in one
temporary directory, and it listens on free loopback ports. Any user name logs in with the
password `secret`; a mailbox appears on first delivery or login.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.sandbox.process import SandboxUnavailable, stop_group, wait_ready

DOVECOT_BINARY = "/usr/sbin/dovecot"
# Every sandbox user has this password. A static passdb (rather than a passwd-file, which Dovecot
# re-reads at most once a second) makes a user usable the moment a test invents its name.
PASSWORD = "secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> tuple[str, int, int]:
    """The unprivileged account the mail processes run as: as root, Debian's `dovecot` user."""
    entry = pwd.getpwnam("dovecot") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def _config(root: Path, imap_port: int, imaps_port: int, lmtp_port: int, tls: bool, extra: str) -> str:
    user, uid, gid = _run_as()
    unprivileged = os.geteuid() != 0
    no_chroot = "  chroot =\n" if unprivileged else ""
    ssl = f"ssl = yes\nssl_cert = <{root}/cert.pem\nssl_key = <{root}/key.pem\n" if tls else "ssl = no\n"
    return f"""\
instance_name = gatewayd-sandbox-{imap_port}
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
{ssl}{extra}
disable_plaintext_auth = no
auth_mechanisms = plain login
mail_location = maildir:~/Maildir
mail_max_userip_connections = 0
default_client_limit = 5000
first_valid_uid = 1
default_internal_user = {user}
default_internal_group = {user}
default_login_user = {user}
mailbox_idle_check_interval = 1 secs
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={root}/mail/%n
}}
namespace inbox {{
  inbox = yes
  separator = /
  mailbox Sent {{
    special_use = \\Sent
    auto = subscribe
  }}
  mailbox Junk {{
    special_use = \\Junk
    auto = subscribe
  }}
  mailbox Archive {{
    special_use = \\Archive
    auto = subscribe
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port if tls else 0}
  }}
  process_limit = 2048
{no_chroot}}}
service imap {{
  process_limit = 2048
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
  unix_listener lmtp {{
    mode = 0666
  }}
}}
service anvil {{
{no_chroot}}}
service ipc {{
{no_chroot}}}
"""


@dataclass
class Dovecot:
    """A running private Dovecot. Use `async with Dovecot.start() as d:` or start()/stop()."""

    root: Path
    imap_port: int
    lmtp_port: int
    imaps_port: int = 0
    process: subprocess.Popen[bytes] | None = None
    users: dict[str, str] = field(default_factory=dict)
    # Extra dovecot.conf lines, e.g. `imap_capability = IMAP4rev1` for a server without IDLE.
    extra_config: str = ""
    _owns_root: bool = False

    host = "127.0.0.1"

    @classmethod
    def create(cls, root: Path | None = None, *, extra_config: str = "") -> Dovecot:
        if not Path(DOVECOT_BINARY).exists():
            raise SandboxUnavailable(
                f"{DOVECOT_BINARY} not found: install Dovecot with scripts/setup "
                "(apt-get install dovecot-imapd dovecot-lmtpd)"
            )
        owns = root is None
        root = Path(tempfile.mkdtemp(prefix="gatewayd-dovecot-")) if root is None else root
        root.mkdir(parents=True, exist_ok=True)
        # As root, Dovecot's helpers run as `dovecot`: every directory on the way must be traversable.
        for path in [root, *root.parents]:
            if path != Path("/") and path.stat().st_mode & 0o001 == 0:
                path.chmod(path.stat().st_mode | 0o011)
        _, uid, gid = _run_as()
        for sub in ("run", "state", "mail"):
            (root / sub).mkdir(exist_ok=True)
        os.chown(root / "mail", uid, gid)
        return cls(
            root=root,
            imap_port=free_port(),
            lmtp_port=free_port(),
            extra_config=extra_config,
            _owns_root=owns,
        )

    @property
    def tls(self) -> bool:
        return (self.root / "cert.pem").exists()

    def enable_tls(self, cert_pem: bytes, key_pem: bytes) -> None:
        """Serve IMAPS (and STARTTLS on the plain port) with this certificate; call before start()."""
        (self.root / "cert.pem").write_bytes(cert_pem)
        (self.root / "key.pem").write_bytes(key_pem)
        (self.root / "key.pem").chmod(0o600)
        self.imaps_port = free_port()

    @property
    def config_path(self) -> Path:
        return self.root / "dovecot.conf"

    def start(self, timeout: float = 10.0) -> None:
        self.config_path.write_text(
            _config(self.root, self.imap_port, self.imaps_port, self.lmtp_port, self.tls, self.extra_config)
        )
        log = (self.root / "dovecot.stderr").open("ab")
        self.process = subprocess.Popen(
            [DOVECOT_BINARY, "-F", "-c", str(self.config_path)],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        process = self.process

        def ready() -> bool:
            return self._greets(self.imap_port, b"* OK") and self._greets(self.lmtp_port, b"220")

        try:
            wait_ready(process, ready, "dovecot", self.log_tail, timeout)
        except SandboxUnavailable:
            self.process = None
            raise

    def _greets(self, port: int, prefix: bytes) -> bool:
        try:
            with socket.create_connection((self.host, port), timeout=1) as sock:
                return sock.recv(64).startswith(prefix)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process)
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        self.stop()
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for name in ("dovecot.stderr", "dovecot.log"):
            path = self.root / name
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    # -- users and mail -----------------------------------------------------------------------

    def add_user(self, name: str) -> str:
        """Remember a user (any name works: see PASSWORD); returns its password."""
        self.users[name] = PASSWORD
        return PASSWORD

    def maildir(self, user: str) -> Path:
        return self.root / "mail" / user / "Maildir"

    def deliver(self, user: str, message: bytes | str, sender: str = "sender@example.org") -> None:
        """Deliver one message over LMTP (synchronously; about 3 ms)."""
        raw = message.encode() if isinstance(message, str) else message
        with smtplib.LMTP(self.host, self.lmtp_port) as lmtp:
            lmtp.sendmail(sender, [user], raw)

    async def deliver_async(
        self, user: str, message: bytes | str, sender: str = "sender@example.org"
    ) -> None:
        await asyncio.to_thread(self.deliver, user, message, sender)

    def reset_uidvalidity(self, user: str, folder: str = "INBOX") -> None:
        """Make the server assign a new UIDVALIDITY, as after a mailbox rebuild."""
        box = self.maildir(user) if folder == "INBOX" else self.maildir(user) / f".{folder}"
        for name in ("dovecot-uidlist", "dovecot.index", "dovecot.index.cache", "dovecot.index.log"):
            (box / name).unlink(missing_ok=True)
