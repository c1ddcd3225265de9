"""The leaf parts of a message from its BODYSTRUCTURE (RFC 3501 7.4.2; RFC 9051 7.5.2).

A multipart is a list that starts with its children; any other part starts with its type and
subtype, then its parameters, id, description, transfer encoding and size in octets, and (after
fields that depend on the type) its disposition. message/* parts are leaves, as in
`gatewayd.message`: their insides are not this message's body.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from gatewayd.imap.response import Value
from gatewayd.message import MAX_DEPTH, MAX_PARTS
from gatewayd.message.body import filename_of_parameters
from gatewayd.message.limits import safe

# Where the disposition sits in a single part's list: after the lines (text), after the
# envelope, body and lines (message/rfc822), else after the MD5.
_DISPOSITION_AT = {"text": 9, "message/rfc822": 11}
_DISPOSITION_AT_OTHERWISE = 8
# Base64 as mailers write it: lines of 76 characters and CRLF.
_BASE64_LINE = 78


class BodyStructureError(ValueError):
    """A BODYSTRUCTURE that is not one (or is deeper or larger than a message may be)."""


@dataclass(frozen=True, slots=True)
class LeafPart:
    section: str  # e.g. "2" or "1.3"
    content_type: str  # lower-cased type/subtype
    attachment: bool  # a disposition of attachment, or a file name
    size: int  # decoded size in bytes (base64 estimated from its encoded size)
    encoded_size: int  # octets on the server
    filename: str | None = None  # decoded, from the disposition's `filename` or the type's `name`


def leaf_parts(structure: Value) -> list[LeafPart]:
    """The leaf parts in document order. Raises BodyStructureError on what is not a BODYSTRUCTURE."""
    leaves: list[LeafPart] = []
    if not isinstance(structure, list) or not structure:
        raise BodyStructureError("not a list")
    if isinstance(structure[0], list):
        _walk_multipart(structure, "", 0, leaves)
    else:
        leaves.append(_leaf(structure, "1"))
    return leaves


def _walk_multipart(structure: list[Value], prefix: str, depth: int, leaves: list[LeafPart]) -> None:
    if depth >= MAX_DEPTH:
        raise BodyStructureError("nested too deep")
    # The children come first, then the subtype (the extension data after it may hold lists too).
    children = itertools.takewhile(lambda field: isinstance(field, list), structure)
    for number, child in enumerate(children, start=1):
        if not isinstance(child, list) or not child:
            raise BodyStructureError("an empty part")
        section = f"{prefix}{number}"
        if isinstance(child[0], list):
            _walk_multipart(child, section + ".", depth + 1, leaves)
        elif len(leaves) >= MAX_PARTS:
            raise BodyStructureError("too many parts")
        else:
            leaves.append(_leaf(child, section))


def _leaf(fields: list[Value], section: str) -> LeafPart:
    maintype, subtype, encoding, octets = (fields[i] if len(fields) > i else None for i in (0, 1, 5, 6))
    if not (isinstance(maintype, bytes) and isinstance(subtype, bytes)):
        raise BodyStructureError(f"part {section} has no type")
    if not (isinstance(octets, bytes) and octets.isdigit()):
        raise BodyStructureError(f"part {section} has no size")
    content_type = f"{_text(maintype)}/{_text(subtype)}"
    at = _DISPOSITION_AT.get(content_type, _DISPOSITION_AT.get(_text(maintype), _DISPOSITION_AT_OTHERWISE))
    disposition = fields[at] if len(fields) > at else None
    kind, parameters = [*disposition, None, None][:2] if isinstance(disposition, list) else (None, None)
    type_parameters, disposition_parameters = _parameters(fields[2]), _parameters(parameters)
    names = [name.split("*")[0].lower() for name, _ in (*type_parameters, *disposition_parameters)]
    named = any(name in ("filename", "name") for name in names)
    filename = safe(None, filename_of_parameters, disposition_parameters, type_parameters) if named else None
    return LeafPart(
        section=section,
        content_type=content_type,
        attachment=(isinstance(kind, bytes) and _text(kind) == "attachment") or named,
        size=_decoded_size(int(octets), _text(encoding) if isinstance(encoding, bytes) else "7bit"),
        encoded_size=int(octets),
        filename=filename,
    )


def _parameters(parameters: Value) -> list[tuple[str, str]]:
    """A parameter list's (name, value) pairs as sent; RFC 2231 names (`filename*0*`) left as they are."""
    if not isinstance(parameters, list):
        return []
    pairs = zip(parameters[::2], parameters[1::2], strict=False)
    return [
        (name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
        for name, value in pairs
        if isinstance(name, bytes) and isinstance(value, bytes)
    ]


def _decoded_size(encoded: int, encoding: str) -> int:
    if encoding != "base64":
        return encoded
    # The CRLF before the next boundary belongs to the boundary: one line end fewer than lines.
    return (encoded - 2 * (encoded // _BASE64_LINE)) * 3 // 4


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace").lower()
