"""Reading a YAML file safely, for the configuration and the rules files alike: a SafeLoader that
refuses a key repeated in one mapping and aliases that expand past MAX_EXPANDED_NODES, and errors
that say where and what without quoting the file (a line of it may hold a password)."""

from __future__ import annotations

from collections.abc import Hashable
from pathlib import Path
from typing import Any

import yaml

from gatewayd.config.checks import _describe


class YamlFileError(Exception):
    """A YAML file that cannot be used. `where` is `line L, column C`, or None for the whole file.
    `syntax`: a YAML syntax error, whose `problem` (None when YAML gave none) each caller words
    its own way; otherwise `problem` is the whole message."""

    def __init__(self, problem: str | None, where: str | None = None, *, syntax: bool = False) -> None:
        super().__init__(problem)
        self.problem = problem
        self.where = where
        self.syntax = syntax


def read_yaml(file: Path, kind: str) -> Any:
    """The data of the YAML file `file` (a `kind` such as "rules file", for messages); YamlFileError
    says why there is none."""
    try:
        text = file.read_text(encoding="utf-8")
        return yaml.load(text, Loader=_Loader)  # a SafeLoader
    except OSError as exc:
        raise YamlFileError(f"cannot read the {kind}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise YamlFileError(f"the {kind} is not valid UTF-8") from None
    except yaml.MarkedYAMLError as exc:
        # Only the position and the problem: str(exc) would quote the offending line.
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else None
        duplicate = isinstance(exc, _DuplicateKey)
        raise YamlFileError(exc.problem or exc.context, where, syntax=not duplicate) from None
    except yaml.reader.ReaderError as exc:
        where, problem = _unprintable(text, exc)
        raise YamlFileError(problem, where) from None
    except yaml.YAMLError:
        raise YamlFileError("invalid YAML") from None
    except RecursionError:
        raise YamlFileError("invalid YAML: nested too deeply") from None


def _unprintable(text: str, exc: yaml.reader.ReaderError) -> tuple[str, str]:
    """Where YAML found a character it does not allow (NUL, most control characters), and which."""
    line = text.count("\n", 0, exc.position) + 1
    column = exc.position - text.rfind("\n", 0, exc.position)
    code = exc.character if isinstance(exc.character, int) else ord(exc.character)
    problem = f"invalid YAML: character U+{code:04X} is not allowed (a binary file?)"
    return f"line {line}, column {column}", problem


class _DuplicateKey(yaml.MarkedYAMLError):
    pass


# Nodes a document may expand to through aliases. PyYAML builds an alias as a shared reference, so
# loading stays cheap, but whatever walks the data (the rules parser) meets every copy: ten levels of
# ten aliases ("billion laughs") are 10**10 conditions, a reload that never ends on the event loop.
MAX_EXPANDED_NODES = 100_000


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses a key repeated in one mapping (plain PyYAML silently keeps the last)
    and aliases that expand the document past MAX_EXPANDED_NODES nodes."""

    def get_single_node(self) -> Any:
        node = super().get_single_node()
        if node is not None and _expanded_size(node, {}) > MAX_EXPANDED_NODES:
            raise yaml.MarkedYAMLError(
                problem=f"aliases expand the document past {MAX_EXPANDED_NODES} nodes",
                problem_mark=node.start_mark,
            )
        return node

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        # A plain scalar YAML reads as a timestamp, int or float may still be none ("2026-02-30",
        # "!!float x"): PyYAML raises a bare ValueError, which has no position and would escape.
        try:
            return super().construct_object(node, deep=deep)
        except (ValueError, OverflowError):
            kind = str(node.tag).rsplit(":", 1)[-1]
            raise yaml.constructor.ConstructorError(
                problem=f"not a valid {kind} (quote it to make it a string)", problem_mark=node.start_mark
            ) from None

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: set[Any] = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, Hashable):
                if key in seen:
                    problem = f"duplicate key {_describe(key)}"
                    raise _DuplicateKey(problem=problem, problem_mark=key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes `node` is with every alias copied out; each distinct node is counted once
    (`sizes`), so this costs the document's size, not the expansion's. An alias of a node that
    contains it (a recursive one) is counted as too many."""
    known = sizes.get(id(node))
    if known is not None:
        return known
    sizes[id(node)] = MAX_EXPANDED_NODES + 1  # until counted: an alias met inside it recurses
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = node.value
    elif isinstance(node, yaml.MappingNode):
        children = [child for pair in node.value for child in pair]
    total = 1
    for child in children:
        total += _expanded_size(child, sizes)
        if total > MAX_EXPANDED_NODES:
            break
    sizes[id(node)] = total
    return total
