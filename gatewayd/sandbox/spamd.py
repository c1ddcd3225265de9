"""A throwaway SpamAssassin spamd on loopback for the tests.

The rules are the Debian package's (/usr/share/spamassassin, or /var/lib/spamassassin when
sa-update has run); the site config is its own copy of the plugin loads (/etc/spamassassin/*.pre)
with a local.cf of ours, so the local admin's settings do not leak in. Local tests only (`-L`: no
DNS blocklists or other network rules), no per-user config, no Bayes: scores are deterministic.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gatewayd.sandbox.dovecot import free_port
from gatewayd.sandbox.process import LoopbackDaemon, SandboxUnavailable

SPAMD_BINARY = "/usr/sbin/spamd"
SITE_CONFIG = Path("/etc/spamassassin")
_LOCAL_CF = """\
use_bayes 0
bayes_auto_learn 0
"""


def _run_as() -> str | None:
    """As root, the children run as Debian's `debian-spamd` (else `nobody`); otherwise as us."""
    if os.geteuid() != 0:
        return None
    for name in ("debian-spamd", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name).pw_name
    return None


@dataclass
class Spamd(LoopbackDaemon):
    """A running private spamd. `Spamd.create()`, then start() and destroy()."""

    name = "spamd"

    @classmethod
    def create(cls, root: Path | None = None) -> Spamd:
        if not Path(SPAMD_BINARY).exists():
            raise SandboxUnavailable(
                f"{SPAMD_BINARY} not found: install spamd with scripts/setup (apt-get install spamd)"
            )
        owns = root is None
        root = Path(tempfile.mkdtemp(prefix="gatewayd-spamd-")) if root is None else root
        # As root, spamd reads the site config as another user: the way there must be open to it.
        for path in [root, *root.parents]:
            want = 0o005 if path == root else 0o001
            if path != Path("/") and path.stat().st_mode & want != want:
                path.chmod(path.stat().st_mode | want)
        site = root / "site"
        site.mkdir(parents=True, exist_ok=True)
        for pre in SITE_CONFIG.glob("*.pre"):
            shutil.copyfile(pre, site / pre.name)
        (site / "local.cf").write_text(_LOCAL_CF)
        return cls(root, free_port(), _owns_root=owns)

    def launch(self) -> None:
        command = [
            SPAMD_BINARY,
            f"--listen={self.host}:{self.port}",
            f"--allowed-ips={self.host}",
            "--nouser-config",
            "--local",
            "--syslog=stderr",
            f"--siteconfigpath={self.root / 'site'}",
            *("--max-children=2", "--min-children=1", "--min-spare=1", "--max-spare=1"),
        ]
        if user := _run_as():
            command.append(f"--username={user}")
        self._popen(command, "spamd.log")

    def _pong(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return b" PONG" in sock.recv(256)
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        path = self.root / "spamd.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])
