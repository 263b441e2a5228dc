"""SIMULATED Azure HCL reports: the real layout around a simulated SNP report or TD report.

For the local provider and the tests, which have neither Azure's paravisor nor AMD or Intel
hardware. The bytes are laid out by the same tables that parse them
(:func:`~duet.attestation.azure.hcl.pack_hcl_report`), and the hardware report inside is made and
signed by the simulated AMD (:mod:`duet.attestation.snp.simulated`) or the simulated TDX platform
(:mod:`duet.attestation.tdx.simulated`), so :func:`~duet.attestation.azure.verify.verify_azure_hcl`
runs every one of its checks on them. It accepts them only when told to trust that simulated
root, and the claims then say ``simulated``.

Everything made here says SIMULATED: the runtime data carries :data:`SIMULATED_NOTE`, the
certificates' names say so (the simulated AMD's and Intel's), and a simulated TDREPORT's MAC is
a hash, not a MAC (nothing offline can check one anyway).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from duet.attestation.azure.hcl import (
    HASH_TYPE_SHA256,
    HASH_TYPES,
    REPORT_TYPE_SNP,
    REPORT_TYPE_TDX,
    USER_DATA_SIZE,
    pack_hcl_report,
    td_report_struct_from_quote_body,
)
from duet.attestation.snp.abi import TcbVersion
from duet.attestation.snp.simulated import DEFAULT_TCB, SimulatedAmd
from duet.attestation.tdx.abi import parse_tdx_quote
from duet.attestation.tdx.simulated import SimulatedTdxPlatform

SIMULATED_NOTE: Final = "SIMULATED: made by duet's local provider, not by Azure's paravisor; it protects nothing"
NV_INDEX_SIZE: Final = 2600
"""The size the real reports are padded to (the NV index's); a simulated one is padded the same."""
DEFAULT_CHIP_ID: Final = hashlib.sha512(b"duet SIMULATED Azure CVM chip").digest()
DEFAULT_MEASUREMENT: Final = hashlib.sha384(b"duet SIMULATED Azure CVM launch measurement").digest()


@dataclass(frozen=True)
class SimulatedHcl:
    """A SIMULATED HCL report and what a verifier needs beside it, as Azure would serve them."""

    report: bytes
    vcek_chain: bytes | None = None
    """SNP: the VCEK chain as IMDS's JSON (``vcekCert``, ``certificateChain``)."""
    td_quote: bytes | None = None
    """TDX: the quote made from the TDREPORT, as IMDS ``/acc/tdquote`` returns it."""


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _jwk(kid: str, ops: list[str], key: rsa.RSAPublicKey) -> dict[str, Any]:
    numbers = key.public_numbers()
    return {
        "kid": kid,
        "key_ops": ops,
        "kty": "RSA",
        "e": _b64url(numbers.e.to_bytes((numbers.e.bit_length() + 7) // 8, "big")),
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
    }


def runtime_data(
    *,
    user_data: bytes,
    vm_unique_id: str,
    ak_public: rsa.RSAPublicKey | None = None,
    configuration: Mapping[str, Any] | None = None,
) -> bytes:
    """The runtime data JSON as the paravisor writes it (keys, vm-configuration, user-data),
    plus :data:`SIMULATED_NOTE`. ``ak_public``: the vTPM attestation key to name (a fresh one if
    None: nothing in duet checks a vTPM quote with it yet)."""
    if len(user_data) != USER_DATA_SIZE:
        raise ValueError(f"user-data must be {USER_DATA_SIZE} bytes, got {len(user_data)}")
    ak = ak_public or rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    doc = {
        "keys": [_jwk("HCLAkPub", ["sign"], ak)],
        "vm-configuration": {
            "console-enabled": False,
            "secure-boot": True,
            "tpm-enabled": True,
            "vmUniqueId": vm_unique_id,
            **(configuration or {}),
        },
        "user-data": user_data.hex().upper(),
        "duet-simulated": SIMULATED_NOTE,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


def _report_data(variable_data: bytes, hash_type: int) -> bytes:
    return bytes(HASH_TYPES[hash_type](variable_data).digest()).ljust(64, b"\0")


def simulated_snp_hcl(
    amd: SimulatedAmd,
    *,
    user_data: bytes,
    vm_unique_id: str,
    chip_id: bytes = DEFAULT_CHIP_ID,
    measurement: bytes = DEFAULT_MEASUREMENT,
    tcb: TcbVersion = DEFAULT_TCB,
    hash_type: int = HASH_TYPE_SHA256,
    ak_public: rsa.RSAPublicKey | None = None,
    **report_fields: Any,
) -> SimulatedHcl:
    """A SIMULATED SNP HCL report binding ``user_data`` and naming ``vm_unique_id``, with the
    VCEK chain of ``amd`` as IMDS serves it. ``report_fields`` go to the SNP report as they are
    (see :meth:`SimulatedAmd.sign_report`), for tests."""
    data = runtime_data(user_data=user_data, vm_unique_id=vm_unique_id, ak_public=ak_public)
    report = amd.sign_report(
        chip_id=chip_id, tcb=tcb, report_data=_report_data(data, hash_type), measurement=measurement, **report_fields
    )
    pem = serialization.Encoding.PEM
    imds = {
        "vcekCert": amd.vcek_certificate(chip_id, tcb).public_bytes(pem).decode(),
        "certificateChain": amd.chain_pem().decode(),
    }
    return SimulatedHcl(
        report=pack_hcl_report(report, data, report_type=REPORT_TYPE_SNP, hash_type=hash_type, pad_to=NV_INDEX_SIZE),
        vcek_chain=json.dumps(imds).encode(),
    )


def simulated_tdx_hcl(
    platform: SimulatedTdxPlatform,
    *,
    user_data: bytes,
    vm_unique_id: str,
    hash_type: int = HASH_TYPE_SHA256,
    ak_public: rsa.RSAPublicKey | None = None,
    td_report: Mapping[str, Any] | None = None,
) -> SimulatedHcl:
    """A SIMULATED TDX HCL report binding ``user_data`` and naming ``vm_unique_id``, with the v4
    quote ``platform`` makes from its TDREPORT. ``td_report`` overrides TD report fields."""
    data = runtime_data(
        user_data=user_data, vm_unique_id=vm_unique_id, ak_public=ak_public, configuration={"tpm-persisted": True}
    )
    quote = platform.quote(_report_data(data, hash_type), td_report=td_report)
    body = parse_tdx_quote(quote).td_report.raw
    td = td_report_struct_from_quote_body(body, cpu_svn=b"SIMULATED", mac=hashlib.sha256(b"SIMULATED MAC" + body).digest())
    return SimulatedHcl(
        report=pack_hcl_report(td, data, report_type=REPORT_TYPE_TDX, hash_type=hash_type, version=2, pad_to=NV_INDEX_SIZE),
        td_quote=quote,
    )
