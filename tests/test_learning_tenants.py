"""One learning store per tenant: what one tenant's reports and sent mail teach never scores
another tenant's mail, nor shows in its events' `sender_reputation`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Config, parse_config
from gatewayd.pipeline.build import build_pipeline, open_learning
from gatewayd.pipeline.learning import LearningStore, TenantLearning, tenant_path
from gatewayd.pipeline.spam import SpamStage
from tests.test_learning import SPAM_LETTER, corpus, message

EVE = "eve@evil.test"


def mailbox(mailbox_id: str) -> dict[str, Any]:
    imap = {"host": "imap.example.com", "username": mailbox_id, "password": "x"}
    return {"id": mailbox_id, "imap": imap}


def tenants_config(tmp_path: Path) -> Config:
    data = {
        "store": {"path": str(tmp_path / "events.db")},
        "pipeline": {"learning": {"min_training": 5}},
        "agents": [
            {"id": "acme", "tenant": "acme", "mailboxes": [mailbox("acme-in")]},
            {"id": "acme-sub", "parent": "acme", "mailboxes": [mailbox("acme-sub-in")]},
            {"id": "globex", "tenant": "globex", "mailboxes": [mailbox("globex-in")]},
            {"id": "plain", "mailboxes": [mailbox("plain-in")]},
        ],
    }
    return parse_config(data, env={}, base_dir=tmp_path)


@pytest.fixture
def learning(tmp_path: Path) -> Iterator[TenantLearning]:
    opened = open_learning(tenants_config(tmp_path))
    yield opened
    opened.close()


def spam_stage(config: Config, learning: TenantLearning) -> SpamStage:
    (stage,) = [spec.stage for spec in build_pipeline(config, learning).stages if spec.stage.name == "spam"]
    assert isinstance(stage, SpamStage)
    return stage


def eve_spam(n: int) -> Any:
    return message("Pharmacy", SPAM_LETTER.format(n=n), sender=EVE)


def scored(stage: SpamStage, mailbox_id: str) -> dict[str, Any]:
    """The spam stage's event data for a new message from Eve in `mailbox_id`."""
    return dict(stage.score(eve_spam(999), None, mailbox_id).data)


def learned_symbols(data: dict[str, Any]) -> set[str]:
    symbols = {finding["symbol"] for finding in data["spam"]["findings"]}
    return symbols & {"BAYES_SPAM", "BAYES_HAM", "FUZZY_SIGNATURE", "REPUTATION_SPAM", "REPUTATION_SENT_TO"}


def test_one_tenants_reports_change_nothing_in_another_tenants_scores(
    tmp_path: Path, learning: TenantLearning
) -> None:
    stage = spam_stage(tenants_config(tmp_path), learning)
    before = {mailbox_id: scored(stage, mailbox_id) for mailbox_id in ("globex-in", "plain-in")}
    ham, spam = corpus(6, seed=7)
    for item in ham:
        assert learning.train(item, "ham", "acme-in")
    for item in spam:
        assert learning.train(item, "spam", "acme-in")
    for n in range(5):
        assert learning.train(eve_spam(n), "spam", "acme-in")
    learning.record_sent("acme-in", "friend@partner.example")

    acme = scored(stage, "acme-in")
    assert {"BAYES_SPAM", "FUZZY_SIGNATURE", "REPUTATION_SPAM"} <= learned_symbols(acme)
    assert acme["sender_reputation"]["spam"] == 5
    # A sub-agent shares its parent's tenant, and so what it learnt.
    assert scored(stage, "acme-sub-in")["sender_reputation"]["spam"] == 5
    for mailbox_id, earlier in before.items():
        now = scored(stage, mailbox_id)
        assert now == earlier, mailbox_id
        assert learned_symbols(now) == set()
        assert now["sender_reputation"] == {
            "address": EVE,
            "listed": None,
            "ham": 0,
            "spam": 0,
            "sent_to": False,
        }
    globex = learning.for_mailbox("globex-in")
    assert globex.counts() == {"spam": 0, "ham": 0, "tokens": 0, "signatures": 0}
    assert globex.reputation("friend@partner.example", None)["sent_to"] is False
    assert learning.for_mailbox("acme-sub-in") is learning.for_mailbox("acme-in")


def test_each_tenant_has_its_own_file_and_an_existing_store_is_the_default_tenants(tmp_path: Path) -> None:
    config = tenants_config(tmp_path)
    assert config.pipeline is not None
    path = config.pipeline.learning.path
    with LearningStore(path) as before_tenants:  # a store from before tenants existed
        before_tenants.train(eve_spam(1), "spam", "plain-in")
    learning = open_learning(config)
    try:
        assert learning.for_mailbox("plain-in").path == path == learning.for_mailbox(None).path
        assert learning.for_mailbox("plain-in").reputation(EVE, "plain-in")["spam"] == 1
        assert (
            learning.for_mailbox("acme-in").path
            == tenant_path(path, "acme")
            == path.with_name("learning.acme.db")
        )
        assert learning.for_mailbox("acme-in").reputation(EVE, None)["spam"] == 0
        assert learning.for_tenant("globex").path == path.with_name("learning.globex.db")
    finally:
        learning.close()


def test_an_unknown_mailbox_gets_no_store_rather_than_another_tenants(
    tmp_path: Path, learning: TenantLearning
) -> None:
    learning.train(eve_spam(1), "spam", "plain-in")
    with pytest.raises(KeyError):
        learning.for_mailbox("nowhere")
    with pytest.raises(KeyError):
        learning.train(eve_spam(2), "spam", "nowhere")
    # The spam stage scores such a message without learned signals, never with the default tenant's.
    data = scored(spam_stage(tenants_config(tmp_path), learning), "nowhere")
    assert data["sender_reputation"]["spam"] == 0 and learned_symbols(data) == set()
