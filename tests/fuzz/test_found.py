"""What the fuzzers found, each reduced to its smallest reproduction.

Each test states the behaviour that must hold; all three were fixed in src/ after they were found
and stay here as regression tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from duet import keys
from duet.errors import VerificationError
from duet.ledger.heads import sign_head, verify_head
from duet.protocol.canonical import timestamp

sys.path.insert(0, str(Path(__file__).parent.parent / "unit" / "client"))

HEAD_FOUND = "verify_head lets rfc8785's ValueError out for a head without canonical form (hypothesis)"
"""Found by test_parsers_hypothesis.py::test_verify_head: parse_head accepts any int tree_size and any
str, then verify_head canonicalizes them and rfc8785 raises IntegerDomainError / CanonicalizationError
(ValueError), not VerificationError."""


def _head(**over: object) -> tuple[dict[str, object], keys.PrivateKey, str]:
    key = keys.generate("ed25519")
    controller = keys.key_id(key.public_key())
    head = sign_head({"tree_size": 1, "root_hash": "ab" * 32, "timestamp": timestamp(), "controller": controller}, key)
    return {**head, **over}, key, controller


@pytest.mark.parametrize("over", [{"tree_size": 2**53}, {"timestamp": "\ud800"}], ids=["tree_size-2**53", "lone-surrogate"])
def test_a_head_without_canonical_form_is_a_verification_error(over: dict[str, object]) -> None:
    head, key, controller = _head(**over)
    with pytest.raises(VerificationError):
        verify_head(head, controller=controller, public_key=key.public_key())


def test_audit_compare_with_a_head_file_of_a_huge_size_is_a_finding(tmp_path: Path) -> None:
    """``duet audit --compare their-head.json`` where the file's head has ``tree_size`` 2**53:
    the file passes ``_head_file``'s shape check (parse_head), then ``Auditor.compare`` raises
    IntegerDomainError out of the audit instead of reporting ``compare_bad_signature``."""
    from ledger_fakes import FakeSource, lawful

    from duet.client.audit import Auditor, HeadStore, OtherView

    ours = lawful()
    auditor = Auditor(FakeSource(ours), HeadStore(tmp_path / "auditor"))
    result = auditor.audit()
    assert result.ok
    auditor.compare(OtherView("their-head.json", {**ours.head(), "tree_size": 2**53}), result)
    assert [finding.code for finding in result.findings] == ["compare_bad_signature"]


QUOTE_FOUND = "verify_quote raises cryptography's errors for a damaged PCK certificate (hypothesis, atheris)"
"""Found by test_parsers_hypothesis.py::test_verify_quote_never_raises_for_bad_evidence and atheris:
verify_quote documents 'never raises for bad evidence', but a PCK chain certificate that loads lazily
and fails later (issuer/subject, extensions, public key) raises cryptography's ValueError /
UnsupportedAlgorithm / TypeError / x509.DuplicateExtension out of verify_pck_chain; `duet evidence
verify FILE` (and `duet verify`, on a controller's evidence) print a traceback instead of a verdict."""
AZURE_DEBUG = Path(__file__).parent.parent / "assets" / "sgx" / "azure-samples_intelsdk_enclave.info.debug_sgx_quote_v3.bin"
AZURE_RELEASE = AZURE_DEBUG.with_name("azure-samples_intelsdk_enclave.info.release_sgx_quote_v3.bin")
ONE_CHARACTER_IN_THE_PCK_PEM = [
    (1158, b"/"),  # ValueError: asn1 UnexpectedTag (issuer, or extensions in _is_ca)
    (1161, b"/"),  # ValueError: asn1 InvalidValue at issuer
    (1491, b"A"),  # TypeError: oid must be X500_UNIQUE_IDENTIFIER for BitString type
    (1505, b"A"),  # UnsupportedAlgorithm: unknown key type, from public_key()
    (1532, b"A"),  # ValueError: Invalid key, from public_key()
    (4371, b"8"),  # x509.DuplicateExtension (found by atheris; in the release quote's PEM), from _is_ca
]


@pytest.mark.parametrize(
    ("offset", "character"), ONE_CHARACTER_IN_THE_PCK_PEM, ids=[str(o) for o, _ in ONE_CHARACTER_IN_THE_PCK_PEM]
)
def test_verify_quote_returns_a_verdict_for_a_damaged_pck_certificate(offset: int, character: bytes) -> None:
    from datetime import UTC, datetime

    from duet.attestation import sgx

    quote = (AZURE_RELEASE if offset == 4371 else AZURE_DEBUG).read_bytes()
    damaged = quote[:offset] + character + quote[offset + 1 :]
    verdict = sgx.verify_quote(damaged, trusted_root_keys=[sgx.intel_sgx_root_key()], now=datetime(2024, 6, 1, tzinfo=UTC))
    assert not verdict.ok


PARSE_FOUND = "parse_quote lets x509.InvalidVersion out for a PCK certificate with a bad version (atheris)"
"""Found by atheris_quotes.py: parse_quote's _pck_chain catches only ValueError around
x509.load_pem_x509_certificate, which raises x509.InvalidVersion (not a ValueError) for a certificate
whose version field is damaged; it escapes parse_quote (and verify_quote, which catches
QuoteFormatError) instead of a QuoteFormatError; `duet evidence show|verify` print a traceback."""


def test_parse_quote_refuses_a_pck_certificate_with_a_bad_version_as_a_format_error() -> None:
    from duet.attestation import sgx

    quote = AZURE_RELEASE.read_bytes()
    damaged = quote[:1096] + b"I" + quote[1097:]  # one base64 character of the leaf's version field: version 34
    with pytest.raises(sgx.QuoteFormatError):
        sgx.parse_quote(damaged)
