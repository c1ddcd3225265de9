"""Run as root, `gatewayd token`, `learn` and `check-message -c` leave every file of a store in
another user's directory to that user, or refuse; `gatewayd run` as root refuses such a store. The
real CLI as a subprocess; the daemon's side is a process of that user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from gatewayd.pipeline.learning import LearningStore
from gatewayd.pipeline.learning.persistence import read_snapshot
from gatewayd.store import StoreUnavailable
from gatewayd.store.ownership import prepare_for_root
from gatewayd.store.tokens import SqliteTokenStore

REPO_ROOT = Path(__file__).resolve().parent.parent
NOBODY = 65534  # uid and gid of the store directory's owner: the service's user
ENV = os.environ | {"PYTHONPATH": str(REPO_ROOT)}


@pytest.fixture(autouse=True)
def _as_root() -> None:
    if os.geteuid() != 0:
        message = "these tests make files as root in another user's directory: run them as root"
        if os.environ.get("CI") == "true":  # CI runs as root: a skip there would hide a regression
            pytest.fail(message, pytrace=False)
        pytest.skip(message)


@pytest.fixture
def base() -> Iterator[Path]:
    # Not under pytest's 0700 basetemp: the owner's processes must reach the store.
    path = Path(tempfile.mkdtemp(prefix="gatewayd-ownership-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path)


def owned_directory(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    return path


def config(base: Path, store: Path, learning: Path | None = None) -> str:
    """Agent `bot` of the default tenant, `acme` of the tenant acme (its learning.acme.db)."""
    path = base / "gatewayd.yaml"
    data = {
        "server": {"listen": "127.0.0.1:0"},
        "store": {"path": str(store)},
        "pipeline": {"learning": {"path": str(learning) if learning else None}},
        "agents": [{"id": "bot"}, {"id": "acme", "tenant": "acme"}],
    }
    path.write_text(yaml.safe_dump(data))
    return str(path)


def gatewayd(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "gatewayd", *args]
    return subprocess.run(command, cwd=REPO_ROOT, env=ENV, capture_output=True, text=True, timeout=60)


def owners(directory: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in directory.iterdir()}


def write_as_owner(store: Path) -> None:
    """What the daemon does to the store, as its user: append an event, make a token."""
    script = f"""
        import asyncio
        from gatewayd.events import NewEvent
        from gatewayd.store.sqlite import SqliteEventStore
        from gatewayd.store.tokens import SqliteTokenStore

        async def main():
            events, tokens = SqliteEventStore({str(store)!r}), SqliteTokenStore({str(store)!r})
            await events.open()
            await tokens.open()
            await events.append([NewEvent("test.written", "bot", None, {{}})])
            await tokens.create("bot", "default", ["read"])
            await tokens.close()
            await events.close()

        asyncio.run(main())
        """
    run_as_owner(script)


def mail_folder(base: Path, name: str) -> Path:
    """A folder of one message of its own, readable by the store's owner too."""
    folder = base / name
    folder.mkdir()
    (folder / "1.eml").write_text(f"From: {name}@example.com\nSubject: {name}\n\nabout {name} today\n")
    return folder


def learn_as_owner(store: Path, spam: Path) -> None:
    """What the daemon does to a learning store, as its user: train (a report), record a reply."""
    script = f"""
        from pathlib import Path
        from gatewayd.pipeline.learning import LearningStore, learn_from_dirs

        with LearningStore(Path({str(store)!r})) as store:
            assert learn_from_dirs(store, [Path({str(spam)!r})], [])["spam"] == 1
            store.record_sent("inbox", "someone@example.com")
        """
    run_as_owner(script)


def run_as_owner(script: str) -> None:
    """Run the Python `script` as the store directory's owner; it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=REPO_ROOT,
        env=ENV,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr


def test_token_commands_leave_every_file_to_the_directory_owner(base: Path) -> None:
    state = owned_directory(base / "state")
    store = state / "events.db"
    c = config(base, store)

    created = gatewayd("token", "create", "-c", c, "--agent", "bot")
    assert created.returncode == 0, created.stderr
    assert owners(state) == {"events.db": (NOBODY, NOBODY)}
    write_as_owner(store)

    # On a store with content, root's SQLite makes (and removes) the WAL and shared memory too.
    token_id = dict(line.split(": ", 1) for line in created.stdout.splitlines() if ": " in line)["id"]
    assert gatewayd("token", "revoke", "-c", c, token_id).returncode == 0
    listed = gatewayd("token", "list", "-c", c, "--json")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2
    assert set(owners(state).values()) == {(NOBODY, NOBODY)}
    write_as_owner(store)


async def test_every_file_the_token_store_opens_is_the_owners(base: Path) -> None:
    state = owned_directory(base / "state")
    path = prepare_for_root(state / "events.db", "token create")
    assert path is not None
    tokens = SqliteTokenStore(path, create=False)
    await tokens.open()
    try:
        await tokens.create("bot", "default", ["read"])
        files = owners(state)  # while open: the WAL and shared memory are there
    finally:
        await tokens.close()
    assert set(files) == {"events.db", "events.db-wal", "events.db-shm"}
    assert set(files.values()) == {(NOBODY, NOBODY)}


def _root_database(state: Path) -> str:
    (state / "events.db").touch()  # what a root-run `token create` left before this fix
    return f"chown {NOBODY}:{NOBODY} {state / 'events.db'}"


def _planted_symlink(state: Path) -> str:
    (state / "events.db").symlink_to("/etc/gatewayd-ownership-test")
    os.chown(state / "events.db", NOBODY, NOBODY, follow_symlinks=False)
    return f"{state / 'events.db'} is not a regular file"


@pytest.mark.parametrize("leave", [_root_database, _planted_symlink])
def test_a_file_of_another_user_is_refused(base: Path, leave: object) -> None:
    state = owned_directory(base / "state")
    expected = leave(state)  # type: ignore[operator]
    before = owners(state)
    refused = gatewayd("token", "create", "-c", config(base, state / "events.db"), "--agent", "bot")
    assert refused.returncode == 2
    assert expected in refused.stderr and f"setpriv --reuid={NOBODY}" in refused.stderr
    assert owners(state) == before
    assert not Path("/etc/gatewayd-ownership-test").exists()


def test_a_directory_its_owner_can_move_is_refused(base: Path) -> None:
    home = owned_directory(base / "home")
    state = owned_directory(home / "state")  # the owner can put a symlink in place of `state`
    refused = gatewayd("token", "list", "-c", config(base, state / "events.db"))
    assert refused.returncode == 2
    assert f"can also change {home} above it" in refused.stderr
    assert "gatewayd token list ..." in refused.stderr
    assert owners(state) == {}


def test_a_directory_to_make_in_another_users_is_refused(base: Path) -> None:
    state = owned_directory(base / "state")
    refused = gatewayd("token", "create", "-c", config(base, state / "sub" / "events.db"), "--agent", "bot")
    assert refused.returncode == 2
    assert f"{state / 'sub'} does not exist and {state}" in refused.stderr
    assert owners(state) == {}


def test_run_as_root_refuses_another_users_store(base: Path) -> None:
    state = owned_directory(base / "state")
    try:
        refused = gatewayd("run", "-c", config(base, state / "events.db"))
    except subprocess.TimeoutExpired:
        pytest.fail("gatewayd run started as root on another user's store")
    assert refused.returncode == 2
    assert f"the event store's directory {state} belongs to uid {NOBODY}" in refused.stderr
    assert "gatewayd run ..." in refused.stderr
    assert owners(state) == {}


async def test_a_symlink_swapped_in_after_the_checks_never_makes_a_file(base: Path) -> None:
    state = owned_directory(base / "state")
    path = prepare_for_root(state / "events.db", "token create")
    assert path is not None
    # The owner replaces the database just made with a symlink to where root may write.
    path.unlink()
    path.symlink_to(base / "elsewhere.db")
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        await SqliteTokenStore(path, create=False).open()
    assert not (base / "elsewhere.db").exists()


async def test_a_symlink_swapped_in_to_an_existing_file_is_refused_before_writing(base: Path) -> None:
    state = owned_directory(base / "state")
    path = prepare_for_root(state / "events.db", "token create")
    assert path is not None
    # An empty file SQLite would take for a new database, where root may write.
    (base / "empty").touch()
    path.unlink()
    path.symlink_to(base / "empty")
    with pytest.raises(StoreUnavailable, match=f"it leads to {base / 'empty'}"):
        await SqliteTokenStore(path, create=False).open()
    assert (base / "empty").stat().st_size == 0


def test_learn_leaves_the_learning_stores_to_the_directory_owner(base: Path) -> None:
    state = owned_directory(base / "state")
    c = config(base, state / "events.db")
    spam, ham = mail_folder(base, "spam"), mail_folder(base, "ham")

    learned = gatewayd("learn", "-c", c, "--spam", str(spam), "--ham", str(ham))
    assert learned.returncode == 0, learned.stderr
    assert owners(state) == {"learning.db": (NOBODY, NOBODY)}
    learn_as_owner(state / "learning.db", mail_folder(base, "owners-spam"))

    # On a store with content, and another tenant's made new.
    assert gatewayd("learn", "-c", c, "--ham", str(mail_folder(base, "more-ham"))).returncode == 0
    learned = gatewayd("learn", "-c", c, "--tenant", "acme", "--spam", str(spam))
    assert learned.returncode == 0, learned.stderr
    assert set(owners(state)) == {"learning.db", "learning.acme.db"}
    assert set(owners(state).values()) == {(NOBODY, NOBODY)}
    learn_as_owner(state / "learning.db", mail_folder(base, "owners-spam-2"))
    learn_as_owner(state / "learning.acme.db", mail_folder(base, "acme-owners-spam"))


def test_check_message_makes_no_learning_store_and_leaves_what_it_opens_to_the_owner(base: Path) -> None:
    state = owned_directory(base / "state")
    spam = mail_folder(base, "spam")
    c = config(base, state / "events.db")
    checked = gatewayd("check-message", "-c", c, str(spam))
    assert checked.returncode == 0, checked.stderr
    assert owners(state) == {}  # it only reads: no empty store left behind, for any tenant

    learn_as_owner(state / "learning.db", spam)
    checked = gatewayd("check-message", "-c", c, str(spam))
    assert checked.returncode == 0, checked.stderr
    assert "REPUTATION_SPAM" in checked.stdout  # scored with the owner's store
    assert set(owners(state)) >= {"learning.db"} and set(owners(state).values()) == {(NOBODY, NOBODY)}
    learn_as_owner(state / "learning.db", mail_folder(base, "more-spam"))


def test_a_learning_store_of_another_user_is_refused(base: Path) -> None:
    state = owned_directory(base / "state")
    (state / "learning.db").touch()  # what a root-run `learn` left before this fix
    before = owners(state)
    refused = gatewayd("learn", "-c", config(base, state / "events.db"), "--spam", str(base))
    assert refused.returncode == 2
    assert f"chown {NOBODY}:{NOBODY} {state / 'learning.db'}" in refused.stderr
    assert f"setpriv --reuid={NOBODY}" in refused.stderr and "gatewayd learn ..." in refused.stderr
    assert owners(state) == before


def test_run_as_root_refuses_another_users_learning_store(base: Path) -> None:
    # The event store in root's directory, the learning stores in the service user's.
    learning = owned_directory(base / "learning") / "learning.db"
    try:
        refused = gatewayd("run", "-c", config(base, base / "events.db", learning))
    except subprocess.TimeoutExpired:
        pytest.fail("gatewayd run started as root on another user's learning store")
    assert refused.returncode == 2
    assert f"the learning store's directory {learning.parent} belongs to uid {NOBODY}" in refused.stderr
    assert owners(learning.parent) == {} and not (base / "events.db").exists()


def test_every_file_the_learning_store_opens_is_the_owners(base: Path) -> None:
    state = owned_directory(base / "state")
    path = prepare_for_root(state / "learning.db", "learn", "learning store")
    assert path is not None
    with LearningStore(path, create=False) as store:
        store.record_sent("inbox", "someone@example.com")
        files = owners(state)  # while open: the WAL and shared memory are there
    assert set(files) == {"learning.db", "learning.db-wal", "learning.db-shm"}
    assert set(files.values()) == {(NOBODY, NOBODY)}


def test_a_symlink_swapped_in_for_a_learning_store_never_makes_a_file(base: Path) -> None:
    state = owned_directory(base / "state")
    path = prepare_for_root(state / "learning.db", "learn", "learning store")
    assert path is not None
    path.unlink()
    path.symlink_to(base / "elsewhere.db")
    with pytest.raises(StoreUnavailable, match="unable to open database file"):
        LearningStore(path, create=False)
    assert not (base / "elsewhere.db").exists()


def test_a_symlink_swapped_in_for_an_open_learning_store_is_refused_before_reading(base: Path) -> None:
    state = owned_directory(base / "state")
    path = prepare_for_root(state / "learning.db", "learn", "learning store")
    assert path is not None
    with LearningStore(path, create=False):
        # The owner replaces the file with a symlink while root's `learn` runs: the next reload
        # (training, when the daemon trained meanwhile) opens the path again.
        (base / "empty").touch()
        path.unlink()
        path.symlink_to(base / "empty")
        with pytest.raises(StoreUnavailable, match=f"it leads to {base / 'empty'}"):
            read_snapshot(path, create=False)
    assert (base / "empty").stat().st_size == 0
