"""Binary layouts as tables: rows of ``(offset, size, name as in the vendor's spec)``.

Every hardware-evidence parser in this package (SGX and TDX quotes, SNP reports, Azure HCL
reports) reads its structures through such tables, so that a reader can hold each row against
the vendor's header file or specification, and :func:`check_table` proves at import time that a
table tiles its structure without a gap or an overlap. :func:`pack_fields` is the inverse of
:func:`read_fields`: simulated evidence is laid out by the same rows that parse it, and
:func:`fields_dict` shows a parsed structure by the same rows. A parser that meets bytes its
table does not fit raises a :class:`LayoutError` naming the field and its offset, because "bad
report" alone does not tell anyone which producer to fix.

Integers are little-endian, as in all of these formats.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from duet.errors import VerificationError

Kind = Literal["u8", "u16", "u32", "u64", "bytes"]


class LayoutError(VerificationError):
    """The bytes are not a well-formed ``structure``; ``field``/``offset`` say where.

    Each kind of evidence derives its own, with its code and the name of its structure:
    ``malformed <structure>: <message> (field <field> at offset <offset>)``."""

    structure: ClassVar[str] = "structure"
    """What the bytes were meant to be, for the message."""
    offset_format: ClassVar[str] = ""
    """The format of the offset in the message: decimal, or as the vendor's tables write it (``#05x``)."""

    def __init__(self, message: str, *, field: str | None = None, offset: int | None = None, code: str | None = None) -> None:
        where = ""
        if field is not None:
            where = f" (field {field}" + (f" at offset {offset:{self.offset_format}}" if offset is not None else "") + ")"
        super().__init__(f"malformed {self.structure}: {message}{where}", code=code)
        self.field = field
        self.offset = offset


@dataclass(frozen=True)
class Field:
    """One row of a layout table: ``[offset, offset+size)`` holds the spec field ``name``."""

    offset: int
    size: int
    name: str
    """The field name as the vendor's header or specification spells it."""
    attr: str
    """The attribute of the parsed dataclass that holds the value."""
    kind: Kind = "bytes"


_UNPACK = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q"}


def check_table(table: Sequence[Field], total: int) -> None:
    """Tables must tile their structure exactly; a typo in an offset fails at import."""
    pos = 0
    for f in table:
        assert f.offset == pos, f"layout gap/overlap before {f.name}"
        assert f.kind == "bytes" or struct.calcsize(_UNPACK[f.kind]) == f.size, f.name
        pos += f.size
    assert pos == total, f"layout covers {pos} bytes, expected {total}"


def read_fields(table: Sequence[Field], buf: bytes, base: int = 0) -> dict[str, Any]:
    """Read every field of ``table`` from ``buf`` starting at ``base``; the caller checked the length."""
    out: dict[str, Any] = {}
    for f in table:
        raw = buf[base + f.offset : base + f.offset + f.size]
        out[f.attr] = raw if f.kind == "bytes" else struct.unpack(_UNPACK[f.kind], raw)[0]
    return out


def pack_fields(table: Sequence[Field], values: dict[str, Any]) -> bytes:
    """Inverse of :func:`read_fields`; missing fields are zero. Used to build (simulated) quotes."""
    unknown = set(values) - {f.attr for f in table}
    if unknown:
        raise ValueError(f"unknown fields {sorted(unknown)}")
    out = bytearray()
    for f in table:
        value = values.get(f.attr, 0 if f.kind != "bytes" else b"")
        if f.kind == "bytes":
            if len(value) > f.size:
                raise ValueError(f"{f.name} is {len(value)} bytes, at most {f.size} fit")
            out += bytes(value).ljust(f.size, b"\0")
        else:
            out += struct.pack(_UNPACK[f.kind], value)
    return bytes(out)


def hexify(value: Any) -> Any:
    """A field's value ready for JSON: bytes as hex, integers as they are."""
    return value.hex() if isinstance(value, bytes | bytearray) else value


def fields_dict(table: Sequence[Field], values: Any) -> dict[str, Any]:
    """Every field of ``table`` by attribute, ready for JSON (:func:`hexify`), from a parsed
    dataclass (its attributes) or a mapping :func:`read_fields` returned."""
    if isinstance(values, Mapping):
        return {f.attr: hexify(values[f.attr]) for f in table}
    return {f.attr: hexify(getattr(values, f.attr)) for f in table}
