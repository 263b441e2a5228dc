"""The SIMULATED vTPM of a fake Azure Confidential VM, behind fake tpm2-tools commands.

A real Azure CVM's paravisor (HCL) exposes two vTPM NV indexes (specs/attestation.md §5.1): the
guest writes 64 bytes of user data to **0x01400002** and, a moment later, reads from
**0x01400001** an HCL report whose runtime data carries that user data and the VM's
``vmUniqueId``, hashed into the hardware report's report data. This program plays that part for
the fake VM of ``tests/fakes/fake_arm.py``, so that the controller's real collection program
(``duet/guest/collect_evidence.py --source azure-vtpm``) runs unchanged on it:

    python fake_vtpm.py nvreadpublic|nvdefine|nvwrite|nvread [tpm2-tools options] INDEX

(the fake guest's ``tpm2_nvreadpublic``, ``tpm2_nvdefine``, ``tpm2_nvwrite`` and ``tpm2_nvread``
are two-line scripts that call it). The vTPM's state is the directory ``$DUET_FAKE_VTPM``:
``vm.json`` (``platform`` snp or tdx, ``vm_unique_id``, ``hardware``: the SIMULATED hardware
directory, ``refresh_s``: how long after a write the report still holds the previous user data),
``nv/`` (the defined user-data index) and ``ak.pem`` (the vTPM's attestation key, made once).

The report is SIMULATED, in the real layout (``duet.attestation.azure.simulated``): an SNP report
signed by the simulated AMD of ``hardware/amd``, or a TD report whose quote the fake IMDS makes
with the simulated Intel platform of ``hardware/intel`` (``tests/fakes/fake_imds.py``). A
controller accepts it only when it trusts those SIMULATED roots (``--trust-simulated-cvm``).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import rsa

NV_HCL_REPORT = 0x01400001
NV_USER_DATA = 0x01400002
USER_DATA_SIZE = 64


class TpmError(Exception):
    """What tpm2-tools would print before exiting non-zero."""


def _vtpm_dir() -> Path:
    directory = os.environ.get("DUET_FAKE_VTPM", "")
    if not directory or not Path(directory, "vm.json").is_file():
        raise TpmError("ERROR:tcti:src/tss2-tcti/tcti-device.c: Failed to open specified TCTI device file /dev/tpmrm0")
    return Path(directory)


def _options(args: list[str]) -> tuple[dict[str, str], int]:
    """tpm2-tools' ``-X value`` options and the one NV index they act on."""
    options: dict[str, str] = {}
    positional: list[str] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and arg != "-":
            if "=" in arg and arg.startswith("--"):
                name, value = arg.split("=", 1)
                options[name] = value
            else:
                if i + 1 >= len(args):
                    raise TpmError(f"ERROR: option {arg} needs a value")
                options[arg] = args[i + 1]
                i += 1
        else:
            positional.append(arg)
        i += 1
    if len(positional) != 1:
        raise TpmError("ERROR: Expected exactly one NV index")
    try:
        return options, int(positional[0], 0)
    except ValueError:
        raise TpmError(f"ERROR: Could not convert NV index to number, got: {positional[0]!r}") from None


def _nv_file(vtpm: Path, index: int) -> Path:
    return vtpm / "nv" / f"{index:#x}"


def _config(vtpm: Path) -> dict[str, Any]:
    config: dict[str, Any] = json.loads((vtpm / "vm.json").read_text())
    return config


def nvreadpublic(vtpm: Path, args: list[str]) -> bytes:
    _, index = _options(args)
    if index != NV_HCL_REPORT and not _nv_file(vtpm, index).exists():
        raise TpmError("ERROR: Esys_NV_ReadPublic(0x18B) - tpm:handle(1):the handle is not correct for the use")
    size = 2600 if index == NV_HCL_REPORT else len(_nv_file(vtpm, index).read_bytes())
    return f"{index:#x}:\n  attributes:\n    value: ownerread|ownerwrite|authread|authwrite\n  size: {size}\n".encode()


def nvdefine(vtpm: Path, args: list[str]) -> bytes:
    options, index = _options(args)
    if index == NV_HCL_REPORT or _nv_file(vtpm, index).exists():
        raise TpmError("ERROR: Esys_NV_DefineSpace(0x14C) - tpm:error(2.0): NV Index or persistent object already defined")
    size = int(options.get("-s", options.get("--size", "0")), 0)
    _nv_file(vtpm, index).parent.mkdir(exist_ok=True)
    _nv_file(vtpm, index).write_bytes(bytes(size))
    return f"nv-index: {index:#x}\n".encode()


def nvwrite(vtpm: Path, args: list[str]) -> bytes:
    options, index = _options(args)
    path = _nv_file(vtpm, index)
    if index == NV_HCL_REPORT or not path.exists():
        raise TpmError("ERROR: Esys_NV_Write(0x18B) - tpm:handle(1):the handle is not correct for the use")
    source = options.get("-i", options.get("--input", "-"))
    data = sys.stdin.buffer.read() if source == "-" else Path(source).read_bytes()
    size = len(path.read_bytes())
    if len(data) > size:
        raise TpmError(f"ERROR: The data to write ({len(data)} bytes) is larger than the NV index ({size} bytes)")
    previous = path.read_bytes()
    path.with_name(path.name + ".previous").write_bytes(previous)
    path.write_bytes(data + previous[len(data) :])
    return b""


def _user_data(vtpm: Path, refresh_s: float) -> bytes:
    """What the paravisor last put in the report: the user data, once ``refresh_s`` has passed
    since it was written (before that, what was there before)."""
    path = _nv_file(vtpm, NV_USER_DATA)
    if not path.exists():
        return bytes(USER_DATA_SIZE)
    if time.time() - path.stat().st_mtime < refresh_s:
        path = path.with_name(path.name + ".previous")
    data = path.read_bytes() if path.exists() else b""
    return data[:USER_DATA_SIZE].ljust(USER_DATA_SIZE, b"\0")


def _attestation_key(vtpm: Path) -> rsa.RSAPublicKey:
    """The vTPM's attestation key (HCLAkPub in the runtime data): made once, as a vTPM keeps its AK."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    path = vtpm / "ak.pem"
    if not path.exists():
        made = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        path.write_bytes(
            made.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key.public_key()


def hcl_report(vtpm: Path) -> bytes:
    from duet.attestation.azure.simulated import simulated_snp_hcl, simulated_tdx_hcl

    config = _config(vtpm)
    hardware = Path(str(config["hardware"]))
    user_data = _user_data(vtpm, float(config.get("refresh_s", 0.0)))
    vm_unique_id = str(config["vm_unique_id"])
    ak = _attestation_key(vtpm)
    if config["platform"] == "tdx":
        from duet.attestation.tdx.simulated import load_or_create_platform

        platform = load_or_create_platform(hardware / "intel")
        made = simulated_tdx_hcl(platform, user_data=user_data, vm_unique_id=vm_unique_id, ak_public=ak)
    else:
        from duet.attestation.snp.simulated import SimulatedAmd

        amd = SimulatedAmd(hardware / "amd")
        made = simulated_snp_hcl(amd, user_data=user_data, vm_unique_id=vm_unique_id, ak_public=ak)
    return made.report


def nvread(vtpm: Path, args: list[str]) -> bytes:
    options, index = _options(args)
    if index == NV_HCL_REPORT:
        data = hcl_report(vtpm)
    elif _nv_file(vtpm, index).exists():
        data = _nv_file(vtpm, index).read_bytes()
    else:
        raise TpmError("ERROR: Esys_NV_ReadPublic(0x18B) - tpm:handle(1):the handle is not correct for the use")
    offset = int(options.get("--offset", "0"), 0)
    size = int(options.get("-s", options.get("--size", str(len(data) - offset))), 0)
    data = data[offset : offset + size]
    out = options.get("-o", options.get("--output", ""))
    if out and out != "-":
        Path(out).write_bytes(data)
        return b""
    return data


TOOLS = {"nvreadpublic": nvreadpublic, "nvdefine": nvdefine, "nvwrite": nvwrite, "nvread": nvread}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in TOOLS:
        print(f"fake_vtpm: the first argument must be one of {', '.join(TOOLS)}", file=sys.stderr)
        return 2
    try:
        out = TOOLS[argv[0]](_vtpm_dir(), argv[1:])
    except TpmError as exc:
        print(str(exc), file=sys.stderr)
        return 1
    sys.stdout.buffer.write(out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
