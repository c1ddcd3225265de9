"""Run as root, gatewayd leaves nothing in its state directory that the directory's owner cannot write.

The directory of the event store and the learning stores usually belongs to the user the daemon
runs as (under systemd, the dynamic user of `StateDirectory=gatewayd`), while `gatewayd token`,
`gatewayd learn` and `gatewayd check-message -c` are often run as root. A database file root made
there is one that daemon can never write, and systemd does not re-own the files inside a state
directory it already owns. SQLite running as root already gives its WAL, shared-memory and
rollback journal files the owner of the database file, so the database file is the one to get
right: those commands make it here, empty (SQLite takes an empty file for a new database), and
give it to the directory's owner and group on its open descriptor.

That owner must not gain root's rights through this (it is the daemon's user: whoever takes the
daemon over). Nothing here follows a symlink it could plant: the file is made relative to the
opened directory with O_EXCL | O_NOFOLLOW, and one already there must be a regular file of the
owner's. SQLite opens by path, and follows a symlink in place of the database (it opens the WAL
and shared memory with O_NOFOLLOW), so the command then opens the database without letting SQLite
create it (`existing_only`), and refuses, before writing, a file SQLite opened under another name:
a symlink swapped in meanwhile (`refuse_elsewhere`; the stores' `create=False`). No directory above
the store's may be one that user can change (rename the store's directory, put a symlink in its
place), as /var/lib/private, root's, guarantees under systemd. Where this does not hold, or a
file of the store already belongs to someone else, the command refuses and says how to run it as
the owner.

`gatewayd run` started as root on such a directory refuses too: its lock file and any database it
made would be root's, and the service, started as that user, could no longer open the store.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from gatewayd.store import StoreUnavailable, opening

# The files SQLite keeps beside a database: WAL, shared memory, rollback journal.
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


class OwnerMismatch(Exception):
    """Run as root, the command would leave the store's directory with files its owner cannot
    write: the message names the path and how to run the command as that owner instead."""


@dataclass(frozen=True, slots=True)
class DirectoryOwner:
    """The user that owns the directory the store is in (or would be made in)."""

    directory: Path  # symlinks resolved
    uid: int
    gid: int

    def run_as(self, command: str) -> str:
        """How to run `gatewayd {command}` as this user instead, for a refusal."""
        ids = f"--reuid={self.uid} --regid={self.gid} --clear-groups"
        return f"run it as that user: setpriv {ids} gatewayd {command}"


def foreign_owner(store_path: Path) -> DirectoryOwner | None:
    """The owner of the store's directory (or of the nearest one above it that exists) when
    gatewayd runs as root and that is another user; None otherwise."""
    if os.geteuid() != 0:
        return None
    directory = Path(os.path.abspath(store_path)).parent
    while not directory.exists() and directory != directory.parent:
        directory = directory.parent
    status = os.stat(directory)
    if status.st_uid == 0:
        return None
    return DirectoryOwner(Path(os.path.realpath(directory)), status.st_uid, status.st_gid)


def refuse_root_run(store_path: Path, what: str = "event store") -> None:
    """OwnerMismatch when `gatewayd run` runs as root on a store (`what`: "event store", "learning
    store") in a directory of another user."""
    owner = foreign_owner(store_path)
    if owner is not None:
        raise OwnerMismatch(
            f"the {what}'s directory {owner.directory} belongs to uid {owner.uid}: run as root,"
            " gatewayd would leave files there (its lock, a new database) that this user cannot write;"
            f" start the service (systemctl start gatewayd) or {owner.run_as('run ...')}"
        )


def prepare_for_root(store_path: Path, command: str, what: str = "event store") -> Path | None:
    """Run as root in another user's directory, the path the `command` (e.g. `token create`)
    opens the store (`what`) by, symlinks resolved, its database file made for that user: open
    it without creating it. None when the store is opened as usual. OwnerMismatch when this is not
    safe."""
    owner = foreign_owner(store_path)
    if owner is None:
        return None
    run_as = owner.run_as(f"{command} ...")
    if owner.directory != Path(os.path.realpath(Path(os.path.abspath(store_path)).parent)):
        raise OwnerMismatch(
            f"the {what}'s directory {store_path.parent} does not exist and {owner.directory},"
            f" where it would be made, belongs to uid {owner.uid}; {run_as}"
        )
    if (changeable := _changeable_above(owner)) is not None:
        raise OwnerMismatch(
            f"the {what}'s directory {owner.directory} belongs to uid {owner.uid}, who can also"
            f" change {changeable} above it, so root cannot open the store there safely; {run_as}"
        )
    with opening(what, store_path):
        _make_database_for(owner, store_path.name, what, run_as)
    return owner.directory / store_path.name


def existing_only(path: Path) -> str:
    """The SQLite URI (connect with uri=True) that opens the database file at `path` read-write,
    and never creates it."""
    return f"file:{quote(str(path))}?mode=rw"


def refuse_elsewhere(what: str, path: Path, database_list: Iterable[Sequence[object]]) -> None:
    """StoreUnavailable when SQLite, asked for `path` (no symlink in it), opened another file: a
    symlink put in its place since. `database_list`: the rows of PRAGMA database_list, which name
    the file opened; read them before anything is written."""
    opened = {str(row[1]): str(row[2]) for row in database_list}
    if opened.get("main") != str(path):
        raise StoreUnavailable(f"cannot open the {what} {path}: it leads to {opened.get('main')}")


def _make_database_for(owner: DirectoryOwner, name: str, what: str, run_as: str) -> None:
    """The database file `name` in the owner's directory, made for the owner if need be; the
    files SQLite keeps beside it, if any, the owner's too."""
    directory = os.open(owner.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(directory).st_uid != owner.uid:
            raise OwnerMismatch(f"the {what}'s directory {owner.directory} changed owner; {run_as}")
        for file in [name] + [name + suffix for suffix in SQLITE_COMPANIONS]:
            _refuse_foreign_file(directory, file, owner, run_as)
        if not _create_for(directory, name, owner, run_as):
            # Made meanwhile: by the daemon, as that user, or by that user as anything.
            _refuse_foreign_file(directory, name, owner, run_as)
    finally:
        os.close(directory)


def _changeable_above(owner: DirectoryOwner) -> Path | None:
    """The first directory above the store's in which its owner could rename or replace the entry
    that leads to the store (None: none can). Any group or other write counts as theirs."""
    entry_uid = owner.uid
    for parent in owner.directory.parents:  # a resolved path: no symlink along it
        status = os.stat(parent)
        writable = status.st_uid == owner.uid or status.st_mode & 0o022
        sticky_protects = status.st_mode & stat.S_ISVTX and owner.uid not in (entry_uid, status.st_uid)
        if writable and not sticky_protects:
            return parent
        entry_uid = status.st_uid
    return None


def _refuse_foreign_file(directory: int, name: str, owner: DirectoryOwner, run_as: str) -> None:
    try:
        status = os.stat(name, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return
    path = owner.directory / name
    if not stat.S_ISREG(status.st_mode):
        raise OwnerMismatch(f"{path} is not a regular file; {run_as}")
    if status.st_uid != owner.uid:
        raise OwnerMismatch(
            f"{path} belongs to uid {status.st_uid}, not to uid {owner.uid} who owns {owner.directory}:"
            f" gatewayd running as that user cannot write it; give it to that user"
            f" (chown {owner.uid}:{owner.gid} {path}) or {run_as}"
        )


def _create_for(directory: int, name: str, owner: DirectoryOwner, run_as: str) -> bool:
    """Make the empty database file `name` in `directory` and give it to the owner; False when
    it exists. OwnerMismatch, the file gone again, when it cannot be given (root without
    CAP_CHOWN, a uid the user namespace does not map)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o644, dir_fd=directory)  # SQLite's mode for a new database
    except FileExistsError:
        return False
    try:
        os.fchown(fd, owner.uid, owner.gid)
    except OSError as exc:
        os.unlink(name, dir_fd=directory)
        raise OwnerMismatch(
            f"cannot give {owner.directory / name} to uid {owner.uid}: {exc}; {run_as}"
        ) from None
    finally:
        os.close(fd)
    return True
