"""Mutated quotes: parsing raises only its format error, and verification never raises at all."""

from __future__ import annotations

import struct
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tdx_helpers import REAL, REAL_NOW, Offsets

from duet.attestation import tdx
from duet.attestation.cvm import CvmVerdict

QUOTES = [p.read_bytes() for p in REAL]
LENGTH_FIELDS = [
    [
        (o.signature_data_len, "<I"),
        (o.certification_data_size, "<I"),
        (o.qe_auth_data_size, "<H"),
        (o.inner_size, "<I"),
        (50, "<I"),
    ]
    for o in map(Offsets, QUOTES)
]


@st.composite
def mutated_quotes(draw: st.DrawFn) -> bytes:
    which = draw(st.integers(0, len(QUOTES) - 1))
    out = bytearray(QUOTES[which])
    for _ in range(draw(st.integers(0, 4))):
        kind = draw(st.sampled_from(["byte", "length", "cut", "splice"]))
        if kind == "byte" and out:
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
        elif kind == "length":
            offset, fmt = draw(st.sampled_from(LENGTH_FIELDS[which]))
            if offset + struct.calcsize(fmt) <= len(out):
                struct.pack_into(fmt, out, offset, draw(st.integers(0, 2 ** (8 * struct.calcsize(fmt)) - 1)))
        elif kind == "cut":
            del out[draw(st.integers(0, len(out))) :]
        else:
            at = draw(st.integers(0, len(out)))
            out[at:at] = draw(st.binary(max_size=64))
    return bytes(out)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated_quotes())
def test_verify_never_raises_for_mutated_quotes(quote: bytes) -> None:
    try:
        tdx.parse_tdx_quote(quote)
    except tdx.TdxQuoteFormatError as exc:
        assert exc.field is not None
    v = tdx.verify_tdx_quote(quote, now=REAL_NOW)
    assert isinstance(v, CvmVerdict) and [s.step for s in v.steps] == list(tdx.TDX_STEPS)
    assert v.ok or v.failure is not None


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=6000))
def test_verify_never_raises_for_arbitrary_bytes(data: bytes) -> None:
    v = tdx.verify_tdx_quote(data, now=datetime.now(UTC))
    assert not v.ok and v.failure is not None and v.failure.step == "parse"
