"""Lookalike From domains and display names naming another domain (gatewayd/pipeline/auth/lookalike.py),
and the auth stage's findings about them."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import MailboxConfig, parse_config
from gatewayd.message import FetchedMessage, ParsedMessage, parse
from gatewayd.pipeline import StageContext
from gatewayd.pipeline.auth import AuthOptions, AuthStage, lookalike
from gatewayd.pipeline.auth.lookalike import ProtectedDomains, display_name_domain, skeleton
from gatewayd.pipeline.learning import LearningStore

MX = "mx.gatewayd.test"
PROTECTED = ProtectedDomains(["agent@example.com", "acme.co.uk", "gmail.com", "@paypal.com"])


@pytest.mark.parametrize(
    ("domain", "resembles"),
    [
        ("examp1e.com", "example.com"),  # digit for letter
        ("exarnple.com", "example.com"),  # rn for m
        ("billing.examp1e.com", "example.com"),  # its organisational domain is compared
        ("ex\u0430mple.com".encode("idna").decode(), "example.com"),  # Cyrillic а, in its xn-- form
        ("xn--exmple-cua.com", "example.com"),  # exámple.com: the accent folds away
        ("exampel.com", "example.com"),  # two letters swapped
        ("exmple.com", "example.com"),  # one dropped
        ("example.co", "example.com"),  # one edit on the registrable part, the suffix too
        ("acrne.co.uk", "acme.co.uk"),  # under a two-level suffix
        ("gmai1.com", "gmail.com"),
        ("paypa1.com", "paypal.com"),
    ],
)
def test_a_lookalike_of_a_protected_domain_resembles_it(domain: str, resembles: str) -> None:
    found = PROTECTED.resembled(domain)
    assert found is not None and found.resembles == resembles


@pytest.mark.parametrize(
    "domain",
    [
        "example.com",  # the domain itself
        "mail.example.com",  # a subdomain of it: the same organisation
        "acme.co.uk",
        "evil.test",  # nothing like any
        "ymail.com",  # one edit from gmail.com, but short names are only compared by skeleton
        "mail.com",
        "example.org.evil.test",
        "exampleshop.com",
        "",
        None,
    ],
)
def test_other_domains_resemble_nothing(domain: str | None) -> None:
    assert PROTECTED.resembled(domain) is None


@pytest.mark.parametrize(
    ("domain", "embeds"),
    [
        ("example.com.evil.test", "example.com"),  # the whole domain as labels of a longer one
        ("www.example.com.evil.test", "example.com"),
        ("example-com.evil.test", "example.com"),  # hyphens for dots
        ("login.example-com.evil.test", "example.com"),
        ("example.com-secure.test", "example.com"),  # a hyphenated word after the suffix
        ("secure-example.net", "example.com"),  # the name as a hyphenated part of the registered name
        ("example-login.com", "example.com"),
        ("secure-paypal.com", "paypal.com"),
        ("paypa1.com.evil.test", "paypal.com"),  # lookalikes fold first
        ("gmail-com.evil.test", "gmail.com"),  # a short name counts with its suffix
        ("acme.co.uk.evil.test", "acme.co.uk"),
        ("acme-co-uk.evil.test", "acme.co.uk"),
    ],
)
def test_a_protected_domain_embedded_in_a_longer_one_is_reported_as_such(domain: str, embeds: str) -> None:
    found = PROTECTED.resembled(domain)
    assert found is not None and found.embedded
    assert found.as_dict() == {"domain": domain, "resembles": embeds}  # the whole From domain


@pytest.mark.parametrize(
    "domain",
    [
        "example.com.au",  # the same name in a country, not hidden in a longer domain
        "paypal.com.br",
        "example.net",  # the same name under another suffix
        "mail.example.com",  # the protected organisation itself
        "example.zendesk.com",  # a name alone as a label: how services host their customers
        "example.evil.test",
        "gmail-backup.net",  # a short name without its suffix is a common word
        "acme-tools.co.uk",
        "examples-store.com",  # parts count whole, never as substrings
        "myexample-com.evil.test",
        "com.example.test",  # the parts in another order
    ],
)
def test_domains_merely_sharing_a_name_embed_nothing(domain: str) -> None:
    assert PROTECTED.resembled(domain) is None


# Names of five characters or fewer (apple, ups, ing), one a mail service's generic word (mail), one
# a suffix (net.ph: `net`), one of two letters (hp), and names of six or more (paypal, google...).
BRANDS = ProtectedDomains(
    [
        *("apple.com", "ups.com", "ing.com", "linux.org", "mail.com", "net.ph", "hp.com", "paypal.com"),
        *("google.com", "facebook.com", "amazon.com", "washington.edu", "office.com"),
    ]
)


@pytest.mark.parametrize(
    ("domain", "embeds"),
    [
        ("secure-apple.net", "apple.com"),  # a short name beside a lure word
        ("apple-support.com", "apple.com"),
        ("apple-id-verify.com", "apple.com"),  # the lure word anywhere among the parts
        ("login.app1e-support.com", "apple.com"),  # lookalikes fold first
        ("ups-billing.net", "ups.com"),
        ("paypalsecure.com", "paypal.com"),  # a name of six or more glued to a lure word
        ("securepaypal.com", "paypal.com"),
        ("verifypaypa1.co.uk", "paypal.com"),
        ("paypalsecure-center.net", "paypal.com"),
        ("accounts-googleupdate.com", "google.com"),
    ],
)
def test_a_brand_beside_a_lure_word_is_embedded(domain: str, embeds: str) -> None:
    found = BRANDS.resembled(domain)
    assert found is not None and found.embedded
    assert found.as_dict() == {"domain": domain, "resembles": embeds}


@pytest.mark.parametrize(
    "domain",
    [
        "snapple.com",  # short names count as whole parts only
        "applebees.com",
        "pineapple-farm.com",
        "apple-pie-recipes.com",  # a short name beside an ordinary word
        "big-apple-tours.com",
        "linux-laptop.net",
        "ups-store-hours.com",
        "appleseed-support.org",  # beside a lure word, but not the name as a whole part
        "apple-support.zendesk.com",  # a help desk's customer, named below its registered name
        "applesupport.com",  # a short name glued: `accounting` is `account` and `ing`
        "accounting-services.com",
        "supporting-families.org",
        "hp-support.net",  # two letters: initials everyone's names share
        "secure-mail.biz",  # mail.com's name is what every mail service is called
        "net-support.com",  # net.ph is named by its suffix
        "googlemail.com",  # a name of six or more glued to an ordinary word: the brands' own, or others'
        "facebookmail.com",
        "amazonses.com",
        "washingtonpost.com",
        "openoffice.org",
        "paypalsecurely.com",  # the lure word must be whole
    ],
)
def test_brands_beside_ordinary_words_are_not_embedded(domain: str) -> None:
    assert BRANDS.resembled(domain) is None


def test_the_answer_is_remembered_per_domain_not_per_organisational_domain() -> None:
    protected = ProtectedDomains(["example.com"])
    assert protected.resembled("news.evil.test") is None
    found = protected.resembled("example.com.evil.test")
    assert found is not None and found.embedded
    assert protected.resembled("news.evil.test") is None


def test_nothing_resembles_an_empty_protected_set() -> None:
    assert ProtectedDomains([None, "", "localhost"]).resembled("examp1e.com") is None


def test_skeleton_folds_lookalikes_and_confusable_letters() -> None:
    assert skeleton("xn--pypal-4ve.com") == "paypal.com"  # Cyrillic а
    assert skeleton("rnicrosoft.corn") == "microsoft.com"
    assert skeleton("g00gle.com") == "google.com"


@pytest.mark.parametrize(
    ("name", "from_domain", "named"),
    [
        ("support@example.com", "evil.test", "example.com"),
        ("Example Support (support@example.com)", "evil.test", "example.com"),
        ("example.com", "evil.test", "example.com"),
        ("PayPal.com", "mailer.evil.test", "paypal.com"),
        ("acme.co.uk", "evil.test", "acme.co.uk"),
        ("support@ex\u0430mple.com", "evil.test", "ex\u0430mple.com".encode("idna").decode()),
    ],
)
def test_a_display_name_naming_another_domain_is_reported(name: str, from_domain: str, named: str) -> None:
    found = display_name_domain(name, from_domain)
    assert found is not None and found.as_dict() == {"domain": from_domain, "resembles": named}


@pytest.mark.parametrize(
    ("name", "from_domain"),
    [
        ("Jane Doe", "example.com"),
        ("support@example.com", "example.com"),
        ("support@example.com", "mail.example.com"),  # the same organisation
        ("Amazon.com", "amazon.com"),
        ("jane@example.com via Help Center", "helpdesk.test"),  # relayed for the person it names
        ("J.Smith", "example.com"),  # no top-level domain
        ("Dr.No", "example.com"),
        ("", "example.com"),
        ("support@example.com", None),
    ],
)
def test_display_names_naming_no_other_domain_are_not(name: str, from_domain: str | None) -> None:
    assert display_name_domain(name, from_domain) is None


def message(sender: str, results: str) -> ParsedMessage:
    raw = (
        f"Authentication-Results: {MX}; {results}\r\nFrom: {sender}\r\nTo: agent@example.com\r\n"
        "Subject: invoice\r\nDate: Sat, 21 Nov 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{abs(hash(sender))}@gatewayd.test>\r\n\r\nPay.\r\n"
    ).encode()
    return parse(FetchedMessage("INBOX", 1, 1, raw, len(raw), (), None))


PASSING_LOOKALIKE = (
    "spf=pass smtp.mailfrom=examp1e.com; dkim=pass header.d=examp1e.com; dmarc=pass header.from=examp1e.com"
)


def mailbox(address: str | None = "agent@example.com") -> MailboxConfig:
    box = {
        "id": "inbox",
        "imap": {"host": "imap.test", "username": "agent", "password": "x"},
        "address": address,
    }
    config = parse_config({"agents": [{"id": "support", "mailboxes": [box]}]}, env={}, base_dir=Path("."))
    return config.mailboxes()[0]


def check(stage: AuthStage, msg: ParsedMessage, box: MailboxConfig | None) -> dict[str, Any]:
    result = stage.check_sync(msg, StageContext(box, {}))
    assert result is not None
    return dict(result.data["auth"])


def symbols(auth: dict[str, Any]) -> list[str]:
    return [finding["symbol"] for finding in auth["findings"]]


def test_a_lookalike_of_the_mailboxs_own_domain_authenticating_for_itself_is_reported() -> None:
    auth = check(
        AuthStage(AuthOptions((MX,))), message("Billing <billing@examp1e.com>", PASSING_LOOKALIKE), mailbox()
    )
    assert auth["verdict"] == "pass"  # it did authenticate, for examp1e.com: rules decide what to do
    assert "FROM_LOOKALIKE_DOMAIN" in symbols(auth)
    assert auth["impersonation"] == [
        {"symbol": "FROM_LOOKALIKE_DOMAIN", "domain": "examp1e.com", "resembles": "example.com"}
    ]


def test_the_mailboxs_own_domain_and_strangers_are_no_lookalikes() -> None:
    stage = AuthStage(AuthOptions((MX,)))
    own = "spf=pass smtp.mailfrom=example.com; dmarc=pass header.from=example.com"
    assert check(stage, message("Boss <boss@example.com>", own), mailbox())["impersonation"] == []
    assert check(stage, message("Bob <bob@examp1e.com>", PASSING_LOOKALIKE), None)["impersonation"] == []


def test_configured_protected_domains_count_for_every_mailbox() -> None:
    stage = AuthStage(AuthOptions((MX,), protected_domains=("northbank.test",)))
    results = "spf=pass smtp.mailfrom=northbamk.test; dmarc=pass header.from=northbamk.test"
    auth = check(stage, message("Bank <alerts@northbamk.test>", results), mailbox(None))
    assert auth["impersonation"] == [
        {"symbol": "FROM_LOOKALIKE_DOMAIN", "domain": "northbamk.test", "resembles": "northbank.test"}
    ]


def test_domains_the_mailbox_wrote_to_or_got_ham_from_are_protected(tmp_path: Path) -> None:
    store = LearningStore(tmp_path / "learning.db")
    try:
        stage = AuthStage(AuthOptions((MX,)), learning=lambda _mailbox: store)
        results = "spf=pass smtp.mailfrom=supp1ier.test; dmarc=pass header.from=supp1ier.test"
        lookalike = message("Orders <orders@supp1ier.test>", results)
        assert check(stage, lookalike, mailbox())["impersonation"] == []
        store.learn_sent("inbox", ["orders@supplier.test"])
        assert "FROM_LOOKALIKE_DOMAIN" in symbols(check(stage, lookalike, mailbox()))
        # Ham reports protect their sender's domain too; a domain reported as spam does not.
        store.train(message("News <news@newsletter-one.test>", "spf=pass"), "ham")
        store.train(message("Spam <x@spammer-one.test>", "spf=pass"), "spam")
        domains = store.correspondent_domains("inbox")
        assert domains == {"supplier.test", "newsletter-one.test"}
        assert store.correspondent_domains("inbox") is domains  # unchanged: the same object, kept
    finally:
        store.close()


def test_an_embedded_protected_domain_is_a_lookalike_whose_detail_says_so() -> None:
    results = "spf=pass smtp.mailfrom=example.com.evil.test; dmarc=pass header.from=example.com.evil.test"
    auth = check(AuthStage(AuthOptions((MX,))), message("IT <it@example.com.evil.test>", results), mailbox())
    assert auth["impersonation"] == [
        {"symbol": "FROM_LOOKALIKE_DOMAIN", "domain": "example.com.evil.test", "resembles": "example.com"}
    ]
    finding = next(f for f in auth["findings"] if f["symbol"] == "FROM_LOOKALIKE_DOMAIN")
    assert finding["detail"] == "example.com.evil.test embeds example.com"


def test_a_display_name_naming_another_address_is_reported_with_both_domains() -> None:
    auth = check(
        AuthStage(AuthOptions((MX,))),
        message('"support@example.com" <x@evil.test>', "spf=pass smtp.mailfrom=evil.test"),
        mailbox(),
    )
    assert auth["impersonation"] == [
        {"symbol": "FROM_DISPLAY_NAME_ADDRESS", "domain": "evil.test", "resembles": "example.com"}
    ]
    finding = next(f for f in auth["findings"] if f["symbol"] == "FROM_DISPLAY_NAME_ADDRESS")
    assert finding["detail"] == "display name names example.com, the From is at evil.test"


def test_a_name_too_long_to_be_one_edit_from_any_protected_one_is_not_edited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every one-character deletion of an 8000-character From domain was looked up: 64 MB of
    strings and 60 ms of CPU a message, for a name no protected one is one edit from."""
    domains = ProtectedDomains(["paypal.com", "example.com"])
    deleted_from: list[str] = []
    real = lookalike._deletions

    def recorded(text: str) -> Iterable[str]:
        deleted_from.append(text)
        return real(text)

    monkeypatch.setattr(lookalike, "_deletions", recorded)
    assert domains.resembled("paypal" + "x" * 8000 + ".com") is None
    assert domains.resembled("paypalx.com") is not None  # one edit: looked up as before
    assert deleted_from == ["paypalx.com"]
