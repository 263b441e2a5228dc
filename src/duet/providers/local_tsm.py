"""The SIMULATED hardware of local CVMs: what configfs-tsm would return on an SNP or TDX guest.

A local CVM is an sshd on loopback, with no TEE. So that the controller's collection and
verification of CVM evidence run for real on it, the local CVM's collection program
(``duet/guest/collect_evidence.py --source simulated``) calls this program as a real guest's
kernel would answer it: given the 64 report-data bytes, it prints the report (SNP) or quote
(TDX) in the real layout and, for SNP, the certificate table, all signed by locally made roots
that say SIMULATED (``duet.attestation.snp.simulated`` / ``tdx.simulated``). The controller
trusts those roots only when its operator says so (``--trust-simulated-cvm``).

Run as ``python -m duet.providers.local_tsm --hardware DIR --platform snp|tdx REPORT_DATA_HEX``.
``DIR`` holds the simulated manufacturer's keys, this machine's chip id and, optionally,
``hardware.json``: settings a test or a demo changes (``measurement`` hex, ``debug``,
``migration``) to play a CVM the policy must refuse, and ``relayed``: the evidence of another
machine comes back (its report data binds another host key), as a machine in the middle would
relay it.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from duet.attestation.bundle import CvmRoots

LOCAL_CVM_MEASUREMENT = hashlib.sha384(b"duet local CVM image v1").hexdigest()
"""The launch measurement (SNP) and MRTD (TDX) of every local CVM, unless hardware.json says
otherwise: what a CVM policy for local CVMs pins (the demo's does)."""
SETTINGS_FILE = "hardware.json"
_CHIP_ID = "chip_id"


def hardware_settings(directory: Path) -> dict[str, Any]:
    path = directory / SETTINGS_FILE
    if not path.exists():
        return {}
    settings = json.loads(path.read_text())
    if not isinstance(settings, dict):
        raise ValueError(f"{path} must hold a JSON object")
    return settings


def chip_id(directory: Path) -> bytes:
    """This simulated machine's 64-byte chip id, made once."""
    path = directory / _CHIP_ID
    if not path.exists():
        temporary = directory / f".{_CHIP_ID}.{os.getpid()}"
        temporary.write_bytes(os.urandom(64))
        try:
            os.link(temporary, path)  # created at most once, whoever comes first
        except FileExistsError:
            pass
        finally:
            temporary.unlink()
    return path.read_bytes()


def _as_asked(directory: Path, report_data: bytes) -> bytes:
    """The report data the hardware signs: the one asked for, or another machine's (``relayed``)."""
    if hardware_settings(directory).get("relayed"):
        return hashlib.sha512(b"another machine's report data" + report_data).digest()
    return report_data


def snp_evidence(directory: Path, report_data: bytes) -> dict[str, str]:
    from duet.attestation.snp.abi import POLICY_DEBUG, POLICY_MIGRATE_MA
    from duet.attestation.snp.simulated import DEFAULT_POLICY, SimulatedAmd

    settings = hardware_settings(directory)
    amd = SimulatedAmd(directory / "amd")
    policy = (
        DEFAULT_POLICY | (POLICY_DEBUG if settings.get("debug") else 0) | (POLICY_MIGRATE_MA if settings.get("migration") else 0)
    )
    chip = chip_id(directory)
    report = amd.sign_report(
        chip_id=chip,
        report_data=_as_asked(directory, report_data),
        measurement=bytes.fromhex(str(settings.get("measurement", LOCAL_CVM_MEASUREMENT))),
        policy=policy,
    )
    return {"provider": "sev_guest", "outblob": _b64(report), "auxblob": _b64(amd.cert_table(chip))}


def tdx_evidence(directory: Path, report_data: bytes) -> dict[str, str]:
    from duet.attestation.tdx.abi import TD_ATTRIBUTE_DEBUG, TD_ATTRIBUTE_MIGRATABLE
    from duet.attestation.tdx.simulated import SIM_TD_ATTRIBUTES, load_or_create_platform

    settings = hardware_settings(directory)
    attributes = SIM_TD_ATTRIBUTES | (TD_ATTRIBUTE_DEBUG if settings.get("debug") else 0)
    attributes |= TD_ATTRIBUTE_MIGRATABLE if settings.get("migration") else 0
    td_report = {"mr_td": bytes.fromhex(str(settings.get("measurement", LOCAL_CVM_MEASUREMENT))), "td_attributes": attributes}
    quote = load_or_create_platform(directory / "intel").quote(_as_asked(directory, report_data), td_report=td_report)
    return {"provider": "tdx_guest", "outblob": _b64(quote), "auxblob": ""}


def simulated_roots(directory: Path) -> CvmRoots:
    """The roots this SIMULATED hardware's evidence chains to (made on first use)."""
    from duet.attestation.bundle import CvmRoots
    from duet.attestation.snp.simulated import SimulatedAmd
    from duet.attestation.tdx.simulated import load_or_create_platform

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    amd = SimulatedAmd(directory / "amd").root()
    intel = load_or_create_platform(directory / "intel").root_key()
    return CvmRoots(amd=(amd,), intel=(intel,))


def roots_pem(directory: Path) -> bytes:
    """The SIMULATED roots as PEM, for a user who chooses to trust them (``duet audit --cvm-roots``):
    the AMD ASK and ARK, then the Intel-style root."""
    from duet.attestation.snp.simulated import SimulatedAmd
    from duet.attestation.tdx.simulated import load_or_create_platform

    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    return SimulatedAmd(directory / "amd").chain_pem() + load_or_create_platform(directory / "intel").root_pem()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="SIMULATED configfs-tsm of a local CVM")
    parser.add_argument("--hardware", type=Path, required=True)
    parser.add_argument("--platform", choices=("snp", "tdx"), required=True)
    parser.add_argument("report_data", help="64 bytes, hex")
    args = parser.parse_args(argv)
    report_data = bytes.fromhex(args.report_data)
    if len(report_data) != 64:
        print("local_tsm: the report data must be 64 bytes", file=sys.stderr)
        return 2
    make = snp_evidence if args.platform == "snp" else tdx_evidence
    print(json.dumps(make(args.hardware, report_data)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
