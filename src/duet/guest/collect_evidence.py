"""Collect this CVM's attestation evidence for duet's controller (design §10).

The controller runs this program on the CVM over SSH, right after it connected, with a fresh
nonce. The program binds the evidence to the CVM's own SSH host key, the one sshd presents:

    report data = SHA-512("duet-cvm-attestation/v1" || 0x00 || SHA-256(host key blob) || nonce)

so that evidence relayed by a machine in the middle (which must present its own host key)
names the wrong key. It prints one JSON object on stdout: ``format``, ``source``, the report
data it asked for, and the evidence as base64 (fields per source, below). Sources:

* ``configfs-tsm`` (Linux >= 6.7, AWS and GCP SNP or TDX guests): a report entry under
  /sys/kernel/config/tsm/report: ``inblob`` <- report data; ``outblob`` (the SNP report or the
  TDX quote), ``auxblob`` (the SNP certificate table, may be empty), ``provider``; the entry's
  ``generation`` must advance by exactly one (no other writer in between).
* ``azure-vtpm`` (Azure CVMs): the report data is written to vTPM NV index 0x01400002, the HCL
  report read from 0x01400001 once its runtime data carries it (tpm2-tools); the VCEK chain
  (SNP) or the TD quote of the TD report (TDX) from the instance metadata service.
* ``simulated`` (duet's local provider): ``--simulator`` is a program that takes the report data
  in hex and prints ``provider``, ``outblob`` and ``auxblob`` as JSON, signed by SIMULATED roots.

Needs root for configfs-tsm and the vTPM (the controller runs it with ``sudo -n``).
Python 3.8 or later, standard library only.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request

FORMAT = "duet-cvm-evidence/v1"
CONTEXT = b"duet-cvm-attestation/v1"
TSM_ROOT = "/sys/kernel/config/tsm/report"
IMDS = os.environ.get("DUET_IMDS_URL", "").rstrip("/") or "http://169.254.169.254"
# DUET_IMDS_URL is a test seam only: duet's fake Azure VM (tests/fakes) points it at a fake instance
# metadata service on loopback. Nothing IMDS serves is trusted: the controller verifies the VCEK chain
# and the TD quote against its pinned roots, so whoever could set this variable gains nothing.
NV_USER_DATA = "0x01400002"
NV_HCL_REPORT = "0x01400001"
HCL_REPORT_TYPE_OFFSET = 1224
HCL_TD_REPORT = slice(32, 32 + 1024)
VTPM_WAIT_S = 10.0


class Failure(Exception):
    """What went wrong, in words the controller can put in the ledger."""


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def report_data(host_key_file: str, nonce: bytes) -> bytes:
    try:
        with open(host_key_file, encoding="ascii") as f:
            fields = f.read().split()
        blob = base64.b64decode(fields[1], validate=True)
    except (OSError, IndexError, ValueError) as exc:
        raise Failure(f"cannot read the SSH host key {host_key_file}: {exc}") from None
    return hashlib.sha512(CONTEXT + b"\x00" + hashlib.sha256(blob).digest() + nonce).digest()


def _read(path: str, optional: bool = False) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        if optional:
            return b""
        raise


def configfs_tsm(data: bytes, nonce: bytes) -> dict[str, str]:
    if not os.path.isdir(TSM_ROOT):
        raise Failure(f"{TSM_ROOT} is missing: the kernel has no configfs-tsm (Linux 6.7 or later, SNP or TDX guest)")
    entry = os.path.join(TSM_ROOT, f"duet-{nonce.hex()[:16]}-{os.getpid()}")
    os.mkdir(entry)
    try:
        before = int(_read(os.path.join(entry, "generation")))
        with open(os.path.join(entry, "inblob"), "wb") as f:
            f.write(data)
        out = _read(os.path.join(entry, "outblob"))
        aux = _read(os.path.join(entry, "auxblob"), optional=True)
        provider = _read(os.path.join(entry, "provider")).decode("ascii", "replace").strip()
        after = int(_read(os.path.join(entry, "generation")))
    finally:
        os.rmdir(entry)
    if after != before + 1:
        raise Failure(f"the report entry changed {after - before} times while it was read: another writer raced this one")
    return {"provider": provider, "outblob": b64(out), "auxblob": b64(aux)}


def _tpm2(*args: str, stdin: bytes | None = None) -> bytes:
    try:
        done = subprocess.run(["tpm2_" + args[0], *args[1:]], input=stdin, capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        raise Failure(f"tpm2-tools are not installed (tpm2_{args[0]}): apt-get install tpm2-tools") from None
    if done.returncode != 0:
        raise Failure("tpm2_{} failed: {}".format(args[0], done.stderr.decode("utf-8", "replace").strip()[:300]))
    return done.stdout


def _imds(path: str, body: bytes | None = None) -> bytes:
    request = urllib.request.Request(IMDS + path, data=body, headers={"Metadata": "true", "Content-Type": "application/json"})
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # IMDS is link-local: never via a proxy
    with direct.open(request, timeout=10) as answer:
        return bytes(answer.read())


def _runtime_user_data(hcl: bytes) -> str:
    size = int.from_bytes(hcl[1232:1236], "little")
    try:
        return str(json.loads(hcl[1236 : 1236 + size]).get("user-data", ""))
    except ValueError:
        return ""


def azure_vtpm(data: bytes) -> dict[str, str]:
    if subprocess.run(["tpm2_nvreadpublic", NV_USER_DATA], capture_output=True, check=False).returncode != 0:
        _tpm2("nvdefine", "-C", "o", "-s", "64", "-a", "ownerread|ownerwrite|authread|authwrite", NV_USER_DATA)
    _tpm2("nvwrite", "-C", "o", "-i", "-", NV_USER_DATA, stdin=data)
    deadline = time.monotonic() + VTPM_WAIT_S
    while True:  # the HCL refreshes the report a moment after the write
        hcl = _tpm2("nvread", "-C", "o", NV_HCL_REPORT)
        if _runtime_user_data(hcl).lower() == data.hex() or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    evidence = {"hcl_report": b64(hcl)}
    report_type = int.from_bytes(hcl[HCL_REPORT_TYPE_OFFSET : HCL_REPORT_TYPE_OFFSET + 4], "little")
    if report_type == 2:
        evidence["vcek_chain"] = _imds("/metadata/THIM/amd/certification").decode("utf-8", "replace")
    elif report_type == 4:
        td_report = base64.urlsafe_b64encode(hcl[HCL_TD_REPORT]).decode("ascii").rstrip("=")
        quote = json.loads(_imds("/acc/tdquote", json.dumps({"report": td_report}).encode()))["quote"]
        evidence["td_quote"] = b64(base64.urlsafe_b64decode(quote + "=" * (-len(quote) % 4)))
    return evidence


def simulated(data: bytes, simulator: list[str]) -> dict[str, str]:
    done = subprocess.run([*simulator, data.hex()], capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        raise Failure("the simulated TSM failed: {}".format(done.stderr.decode("utf-8", "replace").strip()[:300]))
    answer = json.loads(done.stdout)
    return {key: answer[key] for key in ("provider", "outblob", "auxblob")}


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--source", choices=("configfs-tsm", "azure-vtpm", "simulated"), required=True)
    parser.add_argument("--nonce", required=True, help="the controller's 32 bytes, hex")
    parser.add_argument("--host-key-file", default="/etc/ssh/ssh_host_ed25519_key.pub")
    parser.add_argument(
        "--simulator", default="", help="with --source simulated: the program and its arguments, one shell word list"
    )
    args = parser.parse_args(argv)
    try:
        nonce = bytes.fromhex(args.nonce)
        if len(nonce) != 32:
            raise ValueError
    except ValueError:
        print("collect_evidence: --nonce must be 64 hex digits", file=sys.stderr)
        return 2
    try:
        data = report_data(args.host_key_file, nonce)
        if args.source == "configfs-tsm":
            evidence = configfs_tsm(data, nonce)
        elif args.source == "azure-vtpm":
            evidence = azure_vtpm(data)
        else:
            evidence = simulated(data, shlex.split(args.simulator))
    except (Failure, OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
        print(f"collect_evidence: {exc}", file=sys.stderr)
        return 1
    print(json.dumps({"format": FORMAT, "source": args.source, "report_data": data.hex(), **evidence}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
