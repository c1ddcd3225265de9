"""TenantLearning: one LearningStore per tenant, so that what a tenant's reports and sent mail teach
(Bayes counts, spam signatures, sender reputation) never scores another tenant's mail, nor shows
in its events' `sender_reputation`.

Separate files rather than a tenant column: isolation needs no query to remember a filter, each
tenant keeps the single-store fast path (its own in-memory counts, caches and background reload),
and a store from before tenants is the default tenant's unchanged.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from gatewayd.config import DEFAULT_TENANT
from gatewayd.message import ParsedMessage
from gatewayd.pipeline.learning.persistence import SentMark
from gatewayd.pipeline.learning.store import LearningStore


def tenant_path(path: Path, tenant: str) -> Path:
    """The learning file of `tenant`: the configured one for the default tenant (so an existing
    store stays its own), and beside it for any other (`learning.db` -> `learning.acme.db`)."""
    if tenant == DEFAULT_TENANT:
        return path
    return path.with_name(f"{path.stem}.{tenant}{path.suffix}")


class TenantLearning:
    """The learning stores of all tenants, chosen by mailbox; thread-safe as the stores are."""

    def __init__(self, stores: Mapping[str, LearningStore], tenant_of: Mapping[str, str]) -> None:
        """`stores` by tenant (the default tenant's among them), `tenant_of` by mailbox id."""
        self._stores = dict(stores)
        self._tenant_of = dict(tenant_of)

    def for_tenant(self, tenant: str) -> LearningStore:
        """The store of `tenant`; KeyError for a tenant not configured."""
        return self._stores[tenant]

    def for_mailbox(self, mailbox_id: str | None) -> LearningStore:
        """The store of the mailbox's tenant; the default tenant's for None (offline tools such as
        `check-message` without `--mailbox`). KeyError for a mailbox not configured: a guess could
        cross tenants."""
        return self._stores[DEFAULT_TENANT if mailbox_id is None else self._tenant_of[mailbox_id]]

    def train(self, message: ParsedMessage, label: str, mailbox_id: str | None = None) -> bool:
        """Train the store of the mailbox's tenant (see LearningStore.train)."""
        return self.for_mailbox(mailbox_id).train(message, label, mailbox_id)

    def record_sent(self, mailbox_id: str, address: str) -> None:
        """`mailbox_id` wrote to `address`, in its tenant's store (see LearningStore.record_sent)."""
        self.for_mailbox(mailbox_id).record_sent(mailbox_id, address)

    def learn_sent(self, mailbox_id: str, addresses: Iterable[str], mark: SentMark | None = None) -> None:
        """See LearningStore.learn_sent, in the mailbox's tenant's store."""
        self.for_mailbox(mailbox_id).learn_sent(mailbox_id, addresses, mark)

    def sent_mark(self, mailbox_id: str) -> SentMark | None:
        return self.for_mailbox(mailbox_id).sent_mark(mailbox_id)

    def close(self) -> None:
        for store in self._stores.values():
            store.close()
