"""A throwaway rspamd on loopback for the tests: the Debian package's rules, a private everything else.

It reads the packaged config (/etc/rspamd) but none of the local admin's (`LOCAL_CONFDIR` is its
own directory), runs one normal worker on a free loopback port and no controller, proxy or fuzzy
worker, keeps its state and log in one temporary directory, and never touches the network: DNS
goes to a closed loopback port and the fuzzy check (UDP to rspamd.com) is off. No Redis needed.

Start-up compiles the public-suffix list into a Hyperscan database, about 12 s of CPU; rspamd
caches it (`hs_cache_dir`), so the cache lives outside the temporary directory and later start-ups
take under a second.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.sandbox.dovecot import free_port
from gatewayd.sandbox.process import LoopbackDaemon, SandboxUnavailable

RSPAMD_BINARY = "/usr/bin/rspamd"


def _run_as() -> tuple[str, int, int]:
    """As root, the workers run as Debian's `_rspamd` (rspamd refuses root workers); else as us."""
    entry = pwd.getpwnam("_rspamd") if os.geteuid() == 0 else pwd.getpwuid(os.geteuid())
    return entry.pw_name, entry.pw_uid, entry.pw_gid


def _closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def default_cache_dir() -> Path:
    """A Hyperscan cache that outlives one sandbox, private to the user the workers run as."""
    _, uid, gid = _run_as()
    cache = Path(tempfile.gettempdir()) / f"gatewayd-rspamd-cache-{uid}"
    with contextlib.suppress(FileExistsError):
        cache.mkdir(mode=0o700)
        os.chown(cache, uid, gid)
    info = cache.lstat()
    if cache.is_symlink() or info.st_uid != uid or info.st_mode & 0o022:
        raise SandboxUnavailable(f"{cache} is not a private directory of uid {uid}; remove it")
    return cache


def _config(port: int) -> str:
    return f"""\
.include "$CONFDIR/common.conf"
options {{
    pidfile = "$RUNDIR/rspamd.pid";
    .include "$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "$LOCAL_CONFDIR/local.d/options.inc"
}}
logging {{
    type = "file";
    filename = "$LOGDIR/rspamd.log";
    level = "notice";
}}
worker "normal" {{
    bind_socket = "127.0.0.1:{port}";
    .include "$CONFDIR/worker-normal.inc"
    count = 1;
}}
"""


@dataclass
class Rspamd(LoopbackDaemon):
    """A running private rspamd. `Rspamd.create()`, then start() and destroy()."""

    cache_dir: Path = field(kw_only=True)

    name = "rspamd"

    @classmethod
    def create(cls, root: Path | None = None, cache_dir: Path | None = None) -> Rspamd:
        if not Path(RSPAMD_BINARY).exists():
            raise SandboxUnavailable(
                f"{RSPAMD_BINARY} not found: install rspamd with scripts/setup (apt-get install rspamd)"
            )
        owns = root is None
        root = Path(tempfile.mkdtemp(prefix="gatewayd-rspamd-")) if root is None else root
        _, uid, gid = _run_as()
        # The workers run as another user when we are root: every directory on the way must be
        # traversable, and theirs writable.
        for path in [root, *root.parents]:
            if path != Path("/") and path.stat().st_mode & 0o001 == 0:
                path.chmod(path.stat().st_mode | 0o011)
        for sub in ("local.d", "db", "run", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            os.chown(root / sub, uid, gid)
        return cls(root, free_port(), cache_dir=cache_dir or default_cache_dir(), _owns_root=owns)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def launch(self) -> None:
        (self.root / "rspamd.conf").write_text(_config(self.port))
        (self.root / "local.d" / "options.inc").write_text(
            f'dns {{ nameserver = ["127.0.0.1:{_closed_udp_port()}"]; timeout = 0.05s; retransmits = 1; }}\n'
            f'hs_cache_dir = "{self.cache_dir}/";\n'
        )
        (self.root / "local.d" / "fuzzy_check.conf").write_text("enabled = false;\n")
        user, _, _ = _run_as()
        variables = {"LOCAL_CONFDIR": "", "DBDIR": "db", "RUNDIR": "run", "LOGDIR": "log"}
        command = [RSPAMD_BINARY, "-f", "-c", str(self.root / "rspamd.conf")]
        for name, sub in variables.items():
            command += ["--var", f"{name}={self.root / sub}"]
        if os.geteuid() == 0:
            command += ["-u", user, "-g", user]
        self._popen(command, "rspamd.stderr")

    def _pong(self) -> bool:
        # A bare request: urllib would honour the environment's HTTP proxy even for loopback.
        try:
            with socket.create_connection((self.host, self.port), timeout=1) as sock:
                sock.sendall(b"GET /ping HTTP/1.0\r\n\r\n")
                return b"\r\n\r\npong" in sock.recv(4096)
        except OSError:
            return False

    def log_tail(self, lines: int = 20) -> str:
        text = ""
        for path in (self.root / "rspamd.stderr", self.root / "log" / "rspamd.log"):
            if path.exists():
                text += path.read_text(errors="replace")
        return "\n".join(text.splitlines()[-lines:])
