"""The README against the code: every configuration key named, every link and path real."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import pytest

from gatewayd.config import schema

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()

SCHEMAS: dict[str, Mapping[str, object]] = {
    "(top level)": schema._TOP,
    "server": schema._SERVER,
    "store": schema._STORE,
    "logging": schema._LOGGING,
    "agents[]": schema._AGENT,
    "mailboxes[]": schema._MAILBOX,
    "imap": schema._IMAP,
    "smtp": schema._SMTP,
    "pipeline": schema._PIPELINE,
    "pipeline.learning": schema._LEARNING,
    "pipeline.spam.rspamd": schema._RSPAMD,
    "pipeline.spam.spamd": schema._SPAMD,
    **{f"pipeline.{stage}": keys for stage, keys in schema._STAGES.items()},
}
KEYS = [(section, key) for section, keys in SCHEMAS.items() for key in keys]


@pytest.mark.parametrize(("section", "key"), KEYS, ids=[f"{section}.{key}" for section, key in KEYS])
def test_every_config_key_is_named_in_the_readme(section: str, key: str) -> None:
    # As code (`key`, `section.key`, `key: value`) or as a key of a YAML example; a bare word in
    # prose does not count, since many keys are also common words.
    named = re.compile(rf"[`\s{{,.]{re.escape(key)}[`:.]")
    assert named.search(README), f"{section}: {key} is not in the README"


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_every_link_within_the_readme_resolves() -> None:
    anchors = {_anchor(heading) for heading in re.findall(r"(?m)^#+ (.+)$", README)}
    anchors |= set(re.findall(r'<a id="([^"]+)"', README))
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert links
    assert [link for link in links if link not in anchors] == []


def test_every_file_the_readme_names_exists() -> None:
    paths = set(
        re.findall(r"(?<![\w/.-])((?:gatewayd|tests|bench|docs|config|systemd|scripts)/[\w./-]*\w)", README)
    )
    assert len(paths) > 10
    assert sorted(path for path in paths if not (ROOT / path).exists()) == []
