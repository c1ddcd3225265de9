"""Configuration of fleets and tokens: `parent`, `tenant`, and the server's token settings."""

from __future__ import annotations

from typing import Any

import pytest

from gatewayd.config import DEFAULT_TENANT, ConfigError, parse_config


def config_of(*agents: dict[str, Any], **server: Any) -> Any:
    return parse_config({"server": server, "agents": list(agents)}, env={})


def errors_of(*agents: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        config_of(*agents)
    return caught.value.errors


def test_server_token_settings_default_and_validate() -> None:
    server = config_of({"id": "a"}).server
    assert server.allow_query_token is False
    assert server.max_streams_per_token == 100
    assert server.token_check_seconds == 2.0
    server = config_of(
        {"id": "a"}, allow_query_token=True, max_streams_per_token=None, token_check_seconds=0.5
    ).server
    assert (server.allow_query_token, server.max_streams_per_token, server.token_check_seconds) == (
        True,
        None,
        0.5,
    )
    with pytest.raises(ConfigError) as caught:
        config_of({"id": "a"}, allow_query_token="yes", max_streams_per_token=0, token_check_seconds=0)
    assert caught.value.errors == [
        'server.allow_query_token: expected true or false, got "yes"',
        "server.max_streams_per_token: expected an integer >= 1, got 0",
        "server.token_check_seconds: expected a number > 0, got 0",
    ]


def test_parent_any_depth_and_subtrees() -> None:
    config = config_of(
        {"id": "grandchild", "parent": "child"},  # a parent may come later in the file
        {"id": "root"},
        {"id": "child", "parent": "root"},
        {"id": "sibling", "parent": "root"},
        {"id": "loner"},
    )
    assert config.agent("child").parent == "root" and config.agent("root").parent is None
    assert config.subtree("root") == ("grandchild", "root", "child", "sibling")
    assert config.subtree("child") == ("grandchild", "child")
    assert config.subtree("grandchild") == ("grandchild",)
    assert config.subtree("loner") == ("loner",)
    assert config.subtree("nobody") == ()


def test_tenants_default_to_one_and_are_inherited() -> None:
    config = config_of(
        {"id": "acme", "tenant": "acme"},
        {"id": "acme-bot", "parent": "acme"},
        {"id": "acme-bot-2", "parent": "acme-bot", "tenant": "acme"},  # naming the same one is fine
        {"id": "solo"},
    )
    assert [a.tenant for a in config.agents] == ["acme", "acme", "acme", DEFAULT_TENANT]


def test_unknown_parent_and_cycles_are_refused_with_their_key_path() -> None:
    assert errors_of(
        {"id": "a", "parent": "b"},
        {"id": "b", "parent": "c"},
        {"id": "c", "parent": "a"},
        {"id": "d", "parent": "a"},  # leads into the cycle, is not part of it
        {"id": "e", "parent": "e"},
        {"id": "f", "parent": "nobody"},
    ) == [
        'agents[5].parent: unknown agent "nobody"',
        "agents[0].parent: cycle a → b → c → a",
        "agents[4].parent: cycle e → e",
    ]
    assert errors_of({"id": "a", "parent": "not valid"}) == [
        'agents[0].parent: expected 1-64 characters from A-Z a-z 0-9 . _ -, got "not valid"'
    ]


def test_a_sub_agent_cannot_leave_its_parents_tenant() -> None:
    assert errors_of(
        {"id": "acme", "tenant": "acme"},
        {"id": "bot", "parent": "acme", "tenant": "globex"},
        {"id": "top"},
        {"id": "under-top", "parent": "top", "tenant": "acme"},
    ) == [
        'agents[1].tenant: "globex" differs from the tenant "acme" of its parent "acme";'
        " a parent and its sub-agents share one tenant",
        f'agents[3].tenant: "acme" differs from the tenant "{DEFAULT_TENANT}" of its parent "top";'
        " a parent and its sub-agents share one tenant",
    ]


def test_tenants_differing_only_in_case_are_refused() -> None:
    # Each tenant has files named after it: learning.Acme.db and learning.acme.db are one file on
    # a case-insensitive filesystem.
    assert errors_of(
        {"id": "a", "tenant": "Acme"},
        {"id": "b", "tenant": "acme"},
        {"id": "c", "parent": "a", "tenant": "ACME"},
        {"id": "d", "tenant": "Acme"},
    ) == [
        'agents[1].tenant: "acme" differs only in case from the tenant "Acme" of agents[0].tenant;'
        " tenants name files, which would collide on a case-insensitive filesystem",
        'agents[2].tenant: "ACME" differs only in case from the tenant "Acme" of agents[0].tenant;'
        " tenants name files, which would collide on a case-insensitive filesystem",
        'agents[2].tenant: "ACME" differs from the tenant "Acme" of its parent "a";'
        " a parent and its sub-agents share one tenant",
    ]


def test_a_broken_parent_is_reported_once_not_as_unknown() -> None:
    # The parent's own mistake is the only error: its children do not add "unknown agent", nor
    # differ from its tenant, which is unknown.
    assert errors_of({"id": "p", "tenant": "a b"}, {"id": "c", "parent": "p", "tenant": "x"}) == [
        'agents[0].tenant: expected 1-64 characters from A-Z a-z 0-9 . _ -, got "a b"'
    ]


def test_problems_of_mailboxes_tokens_and_parents_hide_no_problem_of_the_fleet() -> None:
    assert errors_of(
        {"id": "p", "mailboxes": 3},
        {"id": "c", "parent": "p", "tenant": "x", "token_sha256": "abc"},
        {"id": "orphan", "parent": "nobody"},
        {"id": "e", "parent": "e"},
        {"id": "under-cycle", "parent": "e", "tenant": "z"},  # e's tenant is unknown: nothing to differ from
        {"id": "q", "mailboxes": [{"id": "m"}]},
        {"id": "q2", "parent": "q", "tenant": "y"},
    ) == [
        "agents[0].mailboxes: expected a list, got an integer",
        "agents[1].token_sha256[0]: expected the token's SHA-256 as 64 hex characters (never the token),"
        " got 3 characters",
        "agents[5].mailboxes[0].imap: missing required key",
        'agents[2].parent: unknown agent "nobody"',
        "agents[3].parent: cycle e → e",
        f'agents[1].tenant: "x" differs from the tenant "{DEFAULT_TENANT}" of its parent "p";'
        " a parent and its sub-agents share one tenant",
        f'agents[6].tenant: "y" differs from the tenant "{DEFAULT_TENANT}" of its parent "q";'
        " a parent and its sub-agents share one tenant",
    ]


def test_a_deep_chain_resolves() -> None:
    chain = [{"id": "a0"}] + [{"id": f"a{i}", "parent": f"a{i - 1}"} for i in range(1, 2000)]
    config = config_of(*chain)
    assert len(config.subtree("a0")) == 2000
    assert config.agent("a1999").tenant == DEFAULT_TENANT
