"""The Gramine TEE backend against a fake ``/dev/attestation`` directory.

The fake behaves like Gramine's pseudo-files: ``user_report_data`` and ``quote`` are FIFOs
served by a thread that takes the report data written (padded or cut to 64 bytes, as Gramine
does) and answers the next read of ``quote`` with a DCAP v3 quote over it (signed by a
simulated platform, since no SGX hardware is here).
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from duet.attestation import sgx as dcap
from duet.attestation.sgx import Policy
from duet.client.verify import verify_attestation
from duet.controller.runtime import open_controller
from duet.controller.settings import Settings
from duet.protocol.canonical import canonical
from duet.protocol.envelope import new_nonce, sign_answer
from duet.tee.base import TeeBackend, TeeError
from duet.tee.gramine import GramineTee
from duet.tee.simulated import SimulatedSgxTee

RD = hashlib.sha512(b"identity").digest()


class FakeAttestation:
    def __init__(self, directory: Path, platform: SimulatedSgxTee, kind: str = "dcap") -> None:
        self.dir = directory
        self.platform = platform
        directory.mkdir()
        (directory / "attestation_type").write_text(kind + "\n")
        os.mkfifo(directory / "user_report_data")
        os.mkfifo(directory / "quote")
        self.quotes = 0
        self.report_data: bytes | None = None
        self.override: bytes | None = None
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            with open(self.dir / "user_report_data", "rb") as fifo:  # blocks until the TEE writes
                data = fifo.read()
            if self._stop:
                return
            self.report_data = data[:64].ljust(64, b"\0")  # Gramine pads and cuts
            quote = self.override or self.platform.quote_bytes(self.report_data)
            with open(self.dir / "quote", "wb") as fifo:  # blocks until the TEE reads the quote
                self.quotes += 1
                try:
                    fifo.write(quote)
                except BrokenPipeError:
                    pass

    def close(self) -> None:
        self._stop = True
        try:
            fd = os.open(self.dir / "user_report_data", os.O_WRONLY | os.O_NONBLOCK)  # wakes the server thread
            os.close(fd)
        except OSError:
            pass  # the thread is not waiting
        self._thread.join(5)


@pytest.fixture
def platform(tmp_path: Path) -> SimulatedSgxTee:
    return SimulatedSgxTee(tmp_path / "platform")


@pytest.fixture
def fake(tmp_path: Path, platform: SimulatedSgxTee) -> Iterator[FakeAttestation]:
    attestation = FakeAttestation(tmp_path / "attestation", platform)
    yield attestation
    attestation.close()


@pytest.fixture
def sealed(tmp_path: Path) -> Path:
    path = tmp_path / "encrypted-mount"
    path.mkdir()
    return path


def test_quotes_come_from_dev_attestation_over_the_report_data(
    fake: FakeAttestation, sealed: Path, platform: SimulatedSgxTee
) -> None:
    tee = GramineTee(fake.dir, sealed)
    assert isinstance(tee, TeeBackend) and tee.name == "sgx-dcap"
    evidence = tee.quote(RD)
    assert set(evidence) == {"type", "quote"} and evidence["type"] == "sgx-dcap"
    verdict = dcap.verify_quote(
        base64.b64decode(evidence["quote"]), trusted_root_keys=[platform.root_key()], now=datetime.now(UTC)
    )
    assert verdict.ok and verdict.quote is not None and verdict.quote.report_body.report_data == RD
    assert fake.report_data == RD and fake.quotes == 1
    assert tee.sealed_dir() == sealed and (sealed.stat().st_mode & 0o777) == 0o700


def test_report_data_must_be_64_bytes(fake: FakeAttestation, sealed: Path) -> None:
    with pytest.raises(TeeError) as err:
        GramineTee(fake.dir, sealed).quote(RD[:32])  # Gramine would pad it silently
    assert err.value.code == "bad_report_data" and fake.quotes == 0


def test_a_quote_over_other_report_data_is_not_served(fake: FakeAttestation, sealed: Path, platform: SimulatedSgxTee) -> None:
    fake.override = platform.quote_bytes(hashlib.sha512(b"someone else").digest())
    with pytest.raises(TeeError) as err:
        GramineTee(fake.dir, sealed).quote(RD)
    assert err.value.code == "gramine_quote_failed" and "other report data" in err.value.message


def test_a_malformed_quote_is_refused(fake: FakeAttestation, sealed: Path) -> None:
    fake.override = b"\x03\x00" + bytes(100)
    with pytest.raises(TeeError) as err:
        GramineTee(fake.dir, sealed).quote(RD)
    assert err.value.code == "gramine_quote_failed" and "malformed" in err.value.message


@pytest.mark.parametrize(
    "case, code", [("no_dev", "not_in_gramine"), ("none", "gramine_no_dcap"), ("no_mount", "gramine_no_sealed_mount")]
)
def test_a_misbuilt_enclave_fails_at_start(tmp_path: Path, platform: SimulatedSgxTee, case: str, code: str) -> None:
    attestation, sealed = tmp_path / "att", tmp_path / "sealed"
    sealed.mkdir()
    if case != "no_dev":
        attestation.mkdir()
        (attestation / "attestation_type").write_text("none\n" if case == "none" else "dcap\n")
    if case == "no_mount":
        sealed.rmdir()
    with pytest.raises(TeeError) as err:
        GramineTee(attestation, sealed)
    assert err.value.code == code


def test_a_gramine_controller_binds_its_identity_and_is_judged_against_intel(
    tmp_path: Path, fake: FakeAttestation, sealed: Path, platform: SimulatedSgxTee
) -> None:
    from support import make_owner

    owner = make_owner(tmp_path)
    settings = Settings(
        state_dir=tmp_path / "state",
        owner_keys=(owner.pub_path,),
        tee="gramine",
        gramine_attestation_dir=fake.dir,
        gramine_sealed_dir=sealed,
    )
    controller = open_controller(settings)
    try:
        # The keys are in the (encrypted) sealed mount, not in the state directory on the host's disk.
        assert {"controller-signing.pem", "controller-tls.key", "anchor.json"} <= {p.name for p in sealed.iterdir()}
        assert not (settings.state_dir / "sealed").exists()
        result = controller.attestation()
        assert result["evidence"]["type"] == "sgx-dcap"
        quote = dcap.parse_quote(base64.b64decode(result["evidence"]["quote"]))
        assert quote.report_body.report_data == hashlib.sha512(canonical(result["identity"])).digest()

        nonce = new_nonce()
        identity = controller.identity
        answer = sign_answer(
            canonical(result),
            controller=identity.controller_id,
            signing_key=identity.signing_key,
            request_digest=None,
            nonce=nonce,
        )
        import json

        assert controller.tls is not None
        verdict = verify_attestation(
            "https://c.example",
            json.loads(answer),
            nonce=nonce,
            tls_cert_der=controller.tls.cert_der,
            policy=Policy(),
            trust_roots=[platform.root_key()],
        )
        # sgx-dcap evidence is only ever checked against Intel's root, whatever roots the user passes.
        assert verdict.failure is not None and (verdict.failure.step, verdict.failure.code) == ("evidence", "untrusted_root")
    finally:
        controller.store.close()
