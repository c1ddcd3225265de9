"""Fuzz the message path: mutated real mail through parse, every stage, the rules' dry run and the store.

    .venv/bin/python bench/fuzz_mail.py [--count N] [--seed S] [--corpus DIR] [--show-slow MS]

Each input is a real message (the shared SpamAssassin corpus and tests/data) put through one or
more seeded mutations (truncation, flipped or inserted bytes, headers duplicated or dropped,
broken MIME boundaries, deep nesting, huge header lines, NULs, bad charsets and encodings, lone
CRs, ...; and from bench/fuzz_rules.py: mail for its rules, text past the 256 KiB cut, RTF
objects, lookalike From domains), then `Pipeline.process` as the throughput bench runs it (with
fuzz_rules.RULES beside the README's, and its protected domains), then `store.append`. A finding
is an exception escaping, a stage's error in `pipeline_errors` (other than its time budget), an
event that is not JSON, or a message taking over --max-cpu-ms of CPU; and for a share
(--cut-share) of the inputs, the cut oracle's (fuzz_rules.cut_disagreement): a rule decided on the
message cut short otherwise than on it whole. Findings are written, with the input, to --out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fuzz_rules

from gatewayd.bench import throughput
from gatewayd.bench.gateway_config import gateway_config
from gatewayd.bench.stats import Result
from gatewayd.config import parse_config
from gatewayd.message import parse
from gatewayd.pipeline import Pipeline, StageSpec
from gatewayd.rules.engine import RULES_TIMEOUT_SECONDS, RulesStage
from gatewayd.rules.load import load_rules
from gatewayd.store import Checkpoint
from gatewayd.store.sqlite import SqliteEventStore

ROOT = Path(__file__).resolve().parent.parent
Mutation = Callable[[random.Random, bytes], bytes]


def _split(raw: bytes) -> tuple[list[bytes], bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(sep)
        if at >= 0:
            return raw[:at].splitlines(keepends=True), raw[at:]
    return raw.splitlines(keepends=True), b""


def truncate(rng: random.Random, raw: bytes) -> bytes:
    return raw[: rng.randrange(len(raw) + 1)]


def flip_bytes(rng: random.Random, raw: bytes) -> bytes:
    data = bytearray(raw)
    for _ in range(rng.randint(1, 20)):
        if data:
            data[rng.randrange(len(data))] = rng.randrange(256)
    return bytes(data)


def insert_bytes(rng: random.Random, raw: bytes) -> bytes:
    junk = rng.choice([b"\x00", b"\r", b"\xff\xfe", b"=?", b"?=", b"--", b"\x1b[31m", b"\xe2\x80\xae", b";"])
    at = rng.randrange(len(raw) + 1)
    return raw[:at] + junk * rng.randint(1, 50) + raw[at:]


def shuffle_headers(rng: random.Random, raw: bytes) -> bytes:
    headers, body = _split(raw)
    if not headers:
        return raw
    for _ in range(rng.randint(1, 5)):
        line = rng.choice(headers)
        if rng.random() < 0.5:
            headers.insert(rng.randrange(len(headers) + 1), line * rng.randint(1, 30))
        elif len(headers) > 1:
            headers.remove(line)
    return b"".join(headers) + body


def break_boundary(rng: random.Random, raw: bytes) -> bytes:
    at = raw.lower().find(b"boundary=")
    if at < 0:
        return raw.replace(b"\n\n", b'\nContent-Type: multipart/mixed; boundary=""\n\n', 1)
    choice = rng.choice([b'boundary=""', b"boundary=", b'boundary="--"', b"boundary=" + b"x" * 5000])
    return raw[:at] + choice + raw[at + 9 :]


def nest(rng: random.Random, raw: bytes) -> bytes:
    depth = rng.choice([50, 200, 1000, 3000])
    kind = rng.choice(["multipart", "rfc822"])
    out = raw
    for level in range(depth):
        if kind == "rfc822":
            out = b"From: a@b.example\nContent-Type: message/rfc822\n\n" + out
        else:
            b = b"b%d" % level
            out = b"Content-Type: multipart/mixed; boundary=%s\n\n--%s\n%s\n--%s--\n" % (b, b, out, b)
    return b"Subject: nested\nFrom: x@y.example\n" + out


def huge_header(rng: random.Random, raw: bytes) -> bytes:
    name = rng.choice([b"Subject", b"From", b"To", b"References", b"Received", b"X-Junk", b"Content-Type"])
    unit = rng.choice([b"a", b"=?utf-8?b?QUFB?= ", b"<a@b> ", b"x@y.example, ", b"; a=b", b"\n\t"])
    return name + b": " + unit * rng.randint(1000, 60000) + b"\n" + raw


def bad_encoding(rng: random.Random, raw: bytes) -> bytes:
    header = rng.choice(
        [
            b"Content-Type: text/plain; charset=x-unknown-999\n",
            b'Content-Type: text/plain; charset="utf-7"\n',
            b"Content-Type: text/html; charset=utf-16\n",
            b"Content-Transfer-Encoding: base64\n",
            b"Content-Transfer-Encoding: quoted-printable\n",
            b"Content-Transfer-Encoding: x-uuencode\n",
            b"Content-Type: text/plain; charset*=utf-8''%ff%fe\n",
            b"Content-Type: ;;;===\n",
            b"Content-Disposition: attachment; filename*0*=utf-8''%e2; filename*1=\"\x00\"\n",
        ]
    )
    body = rng.choice(
        [b"!!!@@@###", b"====\n=\n=ZZ", b"QUJD\x00\xff" * 100, b"\xff\xfe\xfd" * 200, b"A" * 1001]
    )
    return header + b"From: x@y.example\n\n" + body if rng.random() < 0.3 else header + raw


def rfc2047(rng: random.Random, raw: bytes) -> bytes:
    value = rng.choice(
        [
            b"=?utf-8?q?=ff=fe?=",
            b"=?bogus?b?AAAA?=",
            b"=?utf-8?b?####?=",
            b"=?utf-8*en?q?x?=",
            b"=?=?=?=?",
            b"=?utf-8?b?" + b"QUFB" * 20000 + b"?=",
            b"=?utf-8?q?" + b"=41" * 5000 + b"?=" * 1000,
            b"=?iso-2022-jp?b?GyRCJCIbKEI=?=",
            b"=?utf-16?b?//4=?=",
            b"\xff\xfe\xc3(",
            b"\xe2\x80\xae evil",
        ]
    )
    name = rng.choice([b"Subject", b"From", b"To", b"Cc", b"Reply-To", b"Content-Disposition"])
    if name == b"Content-Disposition":
        value = b'attachment; filename="' + value + b'"'
    elif name != b"Subject" and rng.random() < 0.5:
        value = value + b" <a@b.example>"
    return name + b": " + value + b"\n" + raw


def lone_cr(rng: random.Random, raw: bytes) -> bytes:
    return raw.replace(b"\n", b"\r") if rng.random() < 0.5 else raw.replace(b"\n", b"\r\r\n")


def headers_only(rng: random.Random, raw: bytes) -> bytes:
    headers, _ = _split(raw)
    return b"".join(headers)


def empty(rng: random.Random, raw: bytes) -> bytes:
    return rng.choice([b"", b"\n", b"\r\n\r\n", b":", b"From:", b"\x00" * 100, b" \n\t\n"])


def nul_everywhere(rng: random.Random, raw: bytes) -> bytes:
    return raw.replace(rng.choice([b" ", b":", b"<", b"@", b"\n"]), b"\x00")


def eight_bit_headers(rng: random.Random, raw: bytes) -> bytes:
    value = bytes(rng.randrange(128, 256) for _ in range(rng.randint(1, 300)))
    name = rng.choice(
        [b"Subject", b"From", b"To", b"Message-ID", b"Date", b"List-Id", b"Authentication-Results"]
    )
    return name + b": " + value + b"\n" + raw


def odd_headers(rng: random.Random, raw: bytes) -> bytes:
    line = rng.choice(
        [
            b"Date: Mon, 99 Foo 99999 99:99:99 +9999\n",
            b"Date: \n",
            b"Date: 0\n",
            b"Date: Tue, 1 Jan 10000 00:00:00 +0000\n",
            b"From: <>\n",
            b'From: "" <@>\n',
            b"From: a@\n",
            b"From: @@@@@\n",
            b"To: ,,,,,,\n",
            b"To: group: a@b, c@d;, x\n",
            b"Message-ID: <<<>>>\n",
            b"References: " + b"<a@b> " * 10000 + b"\n",
            b"In-Reply-To: \x00\n",
            b"Authentication-Results: ;;;; spf=pass dkim=\n",
            b"Authentication-Results: x; dkim=pass header.d=" + b"a." * 3000 + b"\n",
            b"Received-SPF: pass (" + b"(" * 5000 + b"\n",
            b"DKIM-Signature: v=1; d=;\n",
            b"List-Id: <" + b"x" * 100000 + b">\n",
            b"Auto-Submitted: \xff\n",
            b"Content-Type: multipart/alternative\n",
            b"Content-Type: message/rfc822\n",
            b"Content-Type: message/partial; id=x; number=1; total=2\n",
            b'Content-Type: text/plain; name="a.exe"\n',
            b"MIME-Version: 999\n",
            b" continuation first\n",
        ]
    )
    return line + raw


def rfc822_loop(rng: random.Random, raw: bytes) -> bytes:
    inner = b"Content-Type: message/rfc822\n\nContent-Type: message/rfc822\n\n" * rng.randint(1, 500)
    return b"From: a@b.example\nSubject: loop\n" + inner + raw


def html_garbage(rng: random.Random, raw: bytes) -> bytes:
    body = rng.choice(
        [
            b"<" * 100000,
            b"<a href=" * 20000,
            b"<!--" * 20000,
            b"<div>" * 50000,
            b"&#" + b"9" * 5000 + b";",
            b"&#xffffffffff; &#0; &#55296;" * 100,
            b"<a href='http://" + b"a" * 50000 + b"'>x</a>",
            b"<a href='http://[::1'>x</a><a href='http://%zz/'>y</a><a href='\x00'>z</a>",
            b"<style>" + b"{" * 30000,
            b"http://" + b"a." * 30000 + b"com",
            b"<p>x</p><" + b"x" * 200000,
            b"<script>" + b"</script" * 30000,
            (b"<" + b"x" * 2040 + b" ") * 100,
        ]
    )
    return b"From: a@b.example\nSubject: html\nContent-Type: text/html; charset=utf-8\n\n" + body


def html_attributes(rng: random.Random, raw: bytes) -> bytes:
    value = rng.choice(["³", "²px", "+١", "-1", "1e999", "0x10", "", "\x00", "9" * 400, "½", "\u202e5"])
    tag = rng.choice(['<font size="{0}">x</font>', '<img src="http://a.example/p" width="{0}" height="{0}">'])
    css = rng.choice(["font-size:{0}", "font: bold {0}/0 a", "width:{0}", "color:#{0}", "display:{0}"])
    body = (tag + '<p style="' + css + '">hidden</p><a href="http://{0}/">x</a>').format(value)
    return b"From: a@b.example\nContent-Type: text/html; charset=utf-8\n\n" + body.encode()


def long_runs(rng: random.Random, raw: bytes) -> bytes:
    """A word a pattern may start at, then a long run of one character: regex backtracking."""
    word = rng.choice(
        [b"dear sir", b"100", b"$", b"us$1", b"http://", b"www.", b"ignore", b"you", b"a@", b"-"]
    )
    run = rng.choice([b" ", b"\n", b"\t", b" \n", b".", b"-", b"=", b"0", b"a", b"$", b",", b"!", b"/", b"<"])
    where = rng.choice(["body", "subject", "html"])
    filler = word + run * rng.randint(2000, 60000) + b"x"
    if where == "subject":
        return b"Subject: " + filler.replace(b"\n", b" ") + b"\n" + raw
    content_type = b"text/html" if where == "html" else b"text/plain"
    return b"From: a@b.example\nContent-Type: " + content_type + b"; charset=utf-8\n\n" + filler


MUTATIONS: list[Mutation] = [
    truncate,
    flip_bytes,
    insert_bytes,
    shuffle_headers,
    break_boundary,
    nest,
    huge_header,
    bad_encoding,
    rfc2047,
    lone_cr,
    headers_only,
    empty,
    nul_everywhere,
    eight_bit_headers,
    odd_headers,
    rfc822_loop,
    html_garbage,
    html_attributes,
    long_runs,
    long_runs,
    fuzz_rules.rule_bait,
    fuzz_rules.rule_bait,
    fuzz_rules.rule_bait,
    fuzz_rules.big_text,
    fuzz_rules.rtf,
    fuzz_rules.lookalike_from,
]


_RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
_VERDICTS = {"spam": {"ham", "suspect", "spam"}, "injection": {"none", "low", "medium", "high"}}


def nonsense(data: dict[str, Any]) -> str | None:
    """What in an event's data no input should give: a value of the wrong shape or out of range."""
    for key in ("from", "to", "cc", "reply_to"):
        entries = data[key] if key != "from" else [data[key]] if data[key] is not None else []
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) != {"address", "name"}:
                return f"{key}: {entry!r}"
            if entry["address"] is not None and (
                "@" not in entry["address"] or _CONTROL.search(entry["address"])
            ):
                return f"{key}: address {entry['address']!r}"
    for key in ("date", "received_at"):
        if data[key] is not None and not _RFC3339.fullmatch(data[key]):
            return f"{key}: {data[key]!r}"
    if not isinstance(data["size"], int) or data["size"] < 0:
        return f"size: {data['size']!r}"
    for attachment in data["attachments"]:
        if attachment["size"] is not None and (
            not isinstance(attachment["size"], int) or attachment["size"] < 0
        ):
            return f"attachment size: {attachment!r}"
    if data["has_attachments"] != bool(data["attachments"]):
        return f"has_attachments {data['has_attachments']} with {len(data['attachments'])} attachments"
    for key in ("subject", "body_text_excerpt", "sanitized_excerpt", "message_id"):
        if data.get(key) is not None and (not isinstance(data[key], str) or _CONTROL.search(data[key])):
            return f"{key}: {str(data[key])[:80]!r}"
    spam = data.get("spam")
    if spam is not None and spam["verdict"] not in _VERDICTS["spam"]:
        return f"spam verdict {spam['verdict']!r}"
    injection = data.get("injection")
    if injection is not None and not 0.0 <= injection["score"] <= 1.0:
        return f"injection score {injection['score']!r}"
    return None


def seeds(corpus: Path, limit: int) -> list[bytes]:
    paths = sorted((ROOT / "tests" / "data").rglob("*.eml"))
    for label in ("ham", "spam"):
        paths += sorted((corpus / label).glob("*.eml"))[: limit // 2]
    return [path.read_bytes() for path in paths]


def mutate(rng: random.Random, raw: bytes) -> tuple[bytes, list[str]]:
    applied: list[str] = []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        mutation = rng.choice(MUTATIONS)
        raw = mutation(rng, raw)
        applied.append(mutation.__name__)
    return raw, applied


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--corpus", type=Path, default=throughput.CORPUS)
    parser.add_argument("--max-cpu-ms", type=float, default=1000.0)
    parser.add_argument("--cut-share", type=float, default=0.5)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "gatewayd-fuzz")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="gatewayd-fuzz-"))
    bench = SimpleNamespace(dovecot=SimpleNamespace(host="127.0.0.1", imap_port=1))
    data = gateway_config(bench, ["fz"], workdir / "events.db", 0)  # type: ignore[arg-type]
    data["pipeline"] = {"auth": {"protected_domains": fuzz_rules.PROTECTED}}
    config = parse_config({**data, "rules": data["rules"] + fuzz_rules.RULES}, env={}, base_dir=workdir)
    mailbox = config.mailboxes()[0]
    pipeline, learning = throughput.configured_pipeline(config, Result("fuzz", "fuzz", size={}))
    # The cut oracle's: its rules alone (none stops the others), nothing else.
    only_rules = parse_config({**data, "rules": fuzz_rules.RULES}, env={}, base_dir=workdir)
    rules_pipeline = Pipeline([StageSpec(RulesStage(load_rules(only_rules)), RULES_TIMEOUT_SECONDS)])
    originals = seeds(args.corpus, 400)
    for uid, raw in enumerate(originals[::4], 1):
        if learning is not None:
            learning.train(parse(throughput.fetched(uid, raw)), "spam" if uid % 3 == 0 else "ham")
    store = SqliteEventStore(workdir / "events.db")
    await store.open()
    rng = random.Random(args.seed)
    findings: dict[str, int] = {}
    started = time.monotonic()
    try:
        for uid in range(1, args.count + 1):
            raw, applied = mutate(rng, rng.choice(originals))
            kind = ""
            cpu = time.process_time()
            try:
                event = await pipeline.process(mailbox, throughput.fetched(uid, raw))
                if event is not None:
                    json.dumps(event.data, allow_nan=False)
                    # A stage over its time budget is by design (a loaded machine, a worker thread);
                    # the CPU bound below tells a real blow-up.
                    errors = [e for e in event.data.get("pipeline_errors", []) if e.get("error") != "timeout"]
                    if errors:
                        kind = "pipeline_errors " + json.dumps(errors)[:300]
                    elif (odd := nonsense(event.data)) is not None:
                        kind = "nonsense: " + odd[:300]
                    await store.append([event], Checkpoint(mailbox.id, "INBOX", 1, uid))
            except Exception as exc:
                kind = f"{type(exc).__name__}: {exc}"[:300] + "\n" + traceback.format_exc()[-1500:]
            spent_ms = (time.process_time() - cpu) * 1000
            if not kind and spent_ms > args.max_cpu_ms:
                kind = f"slow: {spent_ms:.0f} ms CPU"
            if not kind and rng.random() < args.cut_share:
                fetched = throughput.fetched(uid, b"")
                try:
                    odd = await fuzz_rules.cut_disagreement(rng, rules_pipeline, mailbox, fetched, raw)
                    kind = f"cut oracle: {odd}" if odd else ""
                except Exception as exc:
                    kind = f"cut oracle {type(exc).__name__}: {exc}"[:300]
                    kind += "\n" + traceback.format_exc()[-1500:]
            if kind:
                key = kind.splitlines()[0][:120]
                findings[key] = findings.get(key, 0) + 1
                if findings[key] <= 3:
                    name = args.out / f"finding-{args.seed}-{uid}.eml"
                    name.write_bytes(raw)
                    print(f"#{uid} {'+'.join(applied)} ({len(raw)} bytes) -> {name}\n  {kind}", flush=True)
    finally:
        await store.close()
        if learning is not None:
            learning.close()
    took = time.monotonic() - started
    print(f"{args.count} inputs in {took:.0f} s, seed {args.seed}; {sum(findings.values())} findings")
    for key, count in sorted(findings.items(), key=lambda item: -item[1]):
        print(f"  {count:5d}  {key}")
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
