"""The Azure HCL report layout and its runtime data, on the two real reports (trustee's test data,
made by Azure's paravisor on SNP and TDX hardware)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from azure_helpers import SNP_HCL, SNP_VM_ID, TD_QUOTE_BODY_OFFSET, TDX_HCL, TDX_QUOTE, TDX_VM_ID, sha256

from duet.attestation.azure.hcl import (
    MAX_RUNTIME_DATA_SIZE,
    RuntimeData,
    RuntimeDataError,
    decode_user_data,
    pack_hcl_report,
    parse_hcl_report,
    parse_runtime_data,
    td_report_struct_from_quote_body,
)

SNP_RUNTIME = parse_hcl_report(SNP_HCL).variable_data
VALID_RUNTIME: dict[str, Any] = json.loads(SNP_RUNTIME)


def test_the_snp_report_parses_by_its_length_fields() -> None:
    hcl = parse_hcl_report(SNP_HCL)
    h, r = hcl.header, hcl.runtime
    assert (h.signature, h.version, h.report_size, h.request_type) == (b"HCLA", 1, 2346, 2)
    assert (r.data_size, r.version, r.report_type, r.report_data_hash_type, r.variable_data_size) == (1130, 1, 2, 1, 1110)
    assert hcl.platform == "snp" and hcl.td_report is None and len(hcl.hardware_report) == 1184
    assert hcl.trailing_bytes == 2600 - 2346  # the NV index is zero-padded
    # the binding the whole chain of trust rests on: REPORT_DATA = SHA-256(runtime data) ‖ 32 zeros
    assert hcl.report_data == sha256(hcl.variable_data) + bytes(32)


def test_the_snp_runtime_data_names_the_vm_and_its_keys() -> None:
    runtime = parse_runtime_data(parse_hcl_report(SNP_HCL).variable_data)
    config = runtime.vm_configuration
    assert config.vm_unique_id == SNP_VM_ID
    assert (config.secure_boot, config.tpm_enabled, config.console_enabled, config.other) == (True, True, True, {})
    assert runtime.kids == ("HCLAkPub", "HCLEkPub")
    assert [k.key_ops for k in runtime.keys] == [("sign",), ("encrypt",)] and runtime.keys[0].kty == "RSA"
    assert decode_user_data(runtime) == bytes(64)  # the sample's guest wrote zeros


def test_the_tdx_report_parses_and_its_td_report_is_the_quotes() -> None:
    hcl = parse_hcl_report(TDX_HCL)
    assert (hcl.header.version, hcl.header.report_size, hcl.runtime.report_type, hcl.platform) == (2, 2437, 4, "tdx")
    td = hcl.td_report
    assert td is not None and td.report_mac["report_type"] == 0x81 and len(hcl.hardware_report) == 1024
    assert hcl.report_data == td.report_data == sha256(hcl.variable_data) + bytes(32)
    # the quote IMDS made from this TDREPORT carries the same body, field for field
    assert td.quote_body() == TDX_QUOTE[TD_QUOTE_BODY_OFFSET : TD_QUOTE_BODY_OFFSET + 584]
    assert td.tee_tcb_info["tee_tcb_svn"].hex() == "02010600000000000000000000000000"
    rebuilt = td_report_struct_from_quote_body(td.quote_body(), cpu_svn=td.report_mac["cpu_svn"])
    assert rebuilt[512:] == td.raw[512:] and rebuilt[128:192] == td.raw[128:192]
    runtime = parse_runtime_data(hcl.variable_data)
    assert runtime.vm_configuration.vm_unique_id == TDX_VM_ID
    assert runtime.vm_configuration.other == {
        "root-cert-thumbprint": "6nZZnYaJc4KqUZ_yvA-mucFdYNouvlPnITnNMXsHl-0",
        "tpm-persisted": False,
    }


@pytest.mark.parametrize("sample", [SNP_HCL, TDX_HCL], ids=["snp", "tdx"])
def test_packing_is_the_inverse_of_parsing(sample: bytes) -> None:
    hcl = parse_hcl_report(sample)
    packed = pack_hcl_report(
        hcl.hw_report,
        hcl.variable_data,
        report_type=hcl.runtime.report_type,
        version=hcl.header.version,
        request_type=hcl.header.request_type,
        pad_to=len(sample),
    )
    assert packed == sample


# --- the runtime data's JSON: every way it can be wrong ------------------------------------------


def _doc(**changes: Any) -> bytes:
    doc = json.loads(json.dumps(VALID_RUNTIME))
    for path, value in changes.items():
        *parents, last = path.split("__")
        holder = doc
        for p in parents:
            holder = holder[p]
        if value is _DELETE:
            del holder[last]
        else:
            holder[last] = value
    return json.dumps(doc).encode()


_DELETE = object()


@pytest.mark.parametrize(
    "data, code, field",
    [
        (b"{not json", "hcl_runtime_data_not_json", "$"),
        (b"\xff\xfe{}", "hcl_runtime_data_not_json", "$"),
        (b"", "hcl_runtime_data_not_json", "$"),
        (b'{"keys": [], "keys": []}', "hcl_runtime_data_not_json", "$"),
        (b'{"user-data": NaN}', "hcl_runtime_data_not_json", "$"),
        (b"[" * 50_000 + b"]" * 50_000, "hcl_runtime_data_too_large", "$"),
        (b"[" * 5_000 + b"]" * 5_000, "hcl_runtime_data_not_json", "$"),
        (b"[]", "hcl_runtime_data_bad_field", "$"),
        (b" " * (MAX_RUNTIME_DATA_SIZE + 1), "hcl_runtime_data_too_large", "$"),
        (_doc(keys=_DELETE), "hcl_runtime_data_bad_field", "keys"),
        (_doc(keys={"kid": "HCLAkPub"}), "hcl_runtime_data_bad_field", "keys"),
        (_doc(keys=[{"kty": "RSA"}]), "hcl_runtime_data_bad_field", "keys[0]"),
        (_doc(keys=["HCLAkPub"]), "hcl_runtime_data_bad_field", "keys[0]"),
        (_doc(keys=[{"kid": "k", "kty": "RSA", "key_ops": "sign"}]), "hcl_runtime_data_bad_field", "keys[0].key_ops"),
        (_doc(**{"vm-configuration": _DELETE}), "hcl_runtime_data_bad_field", "vm-configuration"),
        (_doc(**{"vm-configuration": "on"}), "hcl_runtime_data_bad_field", "vm-configuration"),
        (_doc(**{"vm-configuration__vmUniqueId": _DELETE}), "hcl_runtime_data_bad_field", "vm-configuration.vmUniqueId"),
        (_doc(**{"vm-configuration__vmUniqueId": 7}), "hcl_runtime_data_bad_field", "vm-configuration.vmUniqueId"),
        (_doc(**{"vm-configuration__secure-boot": "true"}), "hcl_runtime_data_bad_field", "vm-configuration.secure-boot"),
        (_doc(**{"vm-configuration__tpm-enabled": 1}), "hcl_runtime_data_bad_field", "vm-configuration.tpm-enabled"),
        (_doc(**{"user-data": 0}), "hcl_runtime_data_bad_field", "user-data"),
    ],
)
def test_bad_runtime_data_is_refused_by_name(data: bytes, code: str, field: str) -> None:
    with pytest.raises(RuntimeDataError) as err:
        parse_runtime_data(data)
    assert (err.value.code, err.value.field) == (code, field), err.value.message
    assert field in err.value.message


@pytest.mark.parametrize(
    "user_data, code",
    [
        (_DELETE, "hcl_user_data_missing"),
        ("00" * 63, "hcl_user_data_malformed"),
        ("00" * 65, "hcl_user_data_malformed"),
        ("zz" * 64, "hcl_user_data_malformed"),
        ("00 " * 42 + "00" * 1, "hcl_user_data_malformed"),  # bytes.fromhex would skip the spaces
        ("０" * 128, "hcl_user_data_malformed"),  # fullwidth digits: not hex, whatever int() thinks
        ("", "hcl_user_data_malformed"),
    ],
)
def test_user_data_must_be_64_bytes_of_hex(user_data: Any, code: str) -> None:
    runtime = parse_runtime_data(_doc(**{"user-data": user_data}))
    with pytest.raises(RuntimeDataError) as err:
        decode_user_data(runtime)
    assert (err.value.code, err.value.field) == (code, "user-data")


def test_unknown_members_are_kept_not_judged() -> None:
    runtime: RuntimeData = parse_runtime_data(_doc(**{"future-member": {"x": 1}, "vm-configuration__new-setting": True}))
    assert runtime.document["future-member"] == {"x": 1} and runtime.vm_configuration.other == {"new-setting": True}
    assert decode_user_data(parse_runtime_data(_doc(**{"user-data": "AB" * 64}))) == b"\xab" * 64
