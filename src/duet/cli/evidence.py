"""``duet evidence``: look at and verify attestation evidence offline.

Every kind duet verifies, told apart by its bytes (:mod:`duet.attestation.detect`; ``--type``
overrides): an SGX DCAP v3 quote (here), and, in :mod:`duet.cli.cvm_evidence`, an SEV-SNP
report, a TDX quote (v4, v5), an Azure vTPM (HCL) report, an Azure Attestation token, or a duet
CVM evidence bundle (what a CVM's collection program prints). Binary, hex, base64 and the usual
JSON wrappers are all read; a file over 1 MiB is refused unread.

Heavy modules (cryptography, rich) are imported inside the commands so that ``duet --help``
and every other command start fast.

Exit status of ``verify``: 0 only when the evidence verifies and, where asked, binds what was
expected and satisfies the policy: for a quote, the signatures, ``--report-data`` and the SGX
policy (default: no debug enclave), by the same pipeline as ``duet verify``; for CVM evidence,
the kind's own steps, then the binding of ``--host-key`` and ``--nonce`` (design §10), the VM id
(``--vm-id``) and the policy (``--cvm-policy``; without it nothing about the measurements, TCB,
debug or migration is judged: they are shown), by the same :func:`~duet.attestation.cvm_evidence.judge`
as the controller. 1 when the evidence fails (the failing step and its code are printed). 2 when
the input or an option is unusable: an unreadable, empty, oversized or unrecognised file, a bad
``--now``/``--nonce``/option file, an option that does not apply to the evidence's kind, or a
certificate or quote the kind needs and the user did not give (an SNP report without ``--vcek``
exits 2 with the code ``vcek_missing`` and where to fetch it: the evidence did not fail, it was
not judged). ``show`` exits 1 when the evidence does not parse.
"""

import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import typer

from duet.cli.output import visible, visible_markup

if TYPE_CHECKING:
    from duet.attestation.detect import Detected

app = typer.Typer(
    help="Inspect and verify attestation evidence offline: SGX and TDX quotes, SEV-SNP reports, Azure HCL reports, "
    "Azure Attestation tokens, duet CVM evidence bundles.",
    no_args_is_help=True,
)
FILE_HELP = "Evidence: binary, hex, base64 or JSON, of any kind duet reads (detected); '-' for stdin."
TYPE_HELP = "The kind of evidence, if detection is wrong: sgx, snp, tdx, azure-hcl, maa, bundle."


def _usage(message: str) -> typer.Exit:
    typer.echo(f"error: {visible(message)}", err=True)
    return typer.Exit(2)


def _evidence(path: Path, evidence_type: Optional[str]) -> "Detected":
    """The file read (at most 1 MiB) and its kind told; exit 2 when it cannot be."""
    from duet.attestation.detect import EVIDENCE_TYPES, MAX_EVIDENCE_BYTES, UndetectedEvidence, detect, unwrap

    if evidence_type is not None and evidence_type not in EVIDENCE_TYPES:
        raise _usage(f"--type {evidence_type!r} is not one of {', '.join(EVIDENCE_TYPES)}")
    try:
        if str(path) == "-":
            data = sys.stdin.buffer.read(MAX_EVIDENCE_BYTES + 1)
        else:
            with path.open("rb") as f:
                data = f.read(MAX_EVIDENCE_BYTES + 1)
    except OSError as exc:
        raise _usage(f"cannot read {path}: {exc.strerror}") from None
    try:
        return unwrap(data, evidence_type) if evidence_type is not None else detect(data)
    except UndetectedEvidence as exc:
        raise _usage(f"{path}: {exc.message}") from None


def _read_quote(detected: "Detected", path: Path) -> bytes:
    from duet.attestation.sgx import QuoteFormatError, decode_quote_text

    try:
        return decode_quote_text(detected.data)
    except (ValueError, QuoteFormatError) as exc:  # JSON without a quote in it: nothing to check
        raise _usage(f"{path}: {exc}") from None


def _time(text: Optional[str]) -> datetime:
    if text is None:
        return datetime.now(UTC)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise _usage(f"--now/--at {text!r} is not an ISO 8601 time (e.g. 2025-01-01T00:00:00Z)") from None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def _value_text(value: Any, name: str = "") -> str:
    if isinstance(value, bytes):
        return value.hex()
    if name in ("ATTRIBUTES.FLAGS", "ATTRIBUTES.XFRM", "MISCSELECT"):
        return f"{value:#018x}" if name.startswith("ATTRIBUTES") else f"{value:#010x}"
    return str(value)


@app.command()
def show(
    file: Path = typer.Argument(..., help=FILE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    evidence_type: Optional[str] = typer.Option(None, "--type", help=TYPE_HELP),
) -> None:
    """Print every field of the evidence, with its offset, as named in its spec (a token: its claims, unverified)."""
    detected = _evidence(file, evidence_type)
    if detected.type != "sgx":
        from duet.cli import cvm_evidence

        cvm_evidence.show(detected, as_json)
        return

    from rich.console import Console
    from rich.table import Table

    from duet.attestation import sgx

    try:
        q = sgx.parse_quote(_read_quote(detected, file))
    except sgx.QuoteFormatError as exc:
        typer.echo(f"error [{visible(exc.code)}]: {visible(exc.message)}", err=True)
        raise typer.Exit(1) from None
    if as_json:
        typer.echo(json.dumps(q.to_dict(), indent=2))
        return

    console = Console()
    sd = q.signature_data
    table = Table(title=f"SGX DCAP v3 quote ({len(q.raw)} bytes, {q.trailing_bytes} trailing)", show_lines=False)
    for col in ("offset", "size", "field", "value"):
        table.add_column(col, overflow="fold")

    def rows(section: str, fields: Any, obj: Any, base: int) -> None:
        table.add_section()
        for f in fields:
            value = getattr(obj, f.attr)
            table.add_row(str(base + f.offset), str(f.size), f"{section} {f.name}", _value_text(value, f.name))

    rows("header", sgx.HEADER_FIELDS, q.header, 0)
    rows("report", sgx.REPORT_BODY_FIELDS, q.report_body, sgx.HEADER_SIZE)
    table.add_row("", "", "report debug enclave", "[bold red]YES[/]" if q.report_body.debug else "no")
    table.add_section()
    table.add_row(str(sgx.SIGNATURE_DATA_LEN_OFFSET), "4", "signature_data_len", str(q.signature_data_len))
    base = sgx.SIGNATURE_DATA_OFFSET
    table.add_section()
    for f in sgx.SIGNATURE_DATA_FIELDS:
        if f.attr != "qe_report":
            table.add_row(str(base + f.offset), str(f.size), f.name, _value_text(getattr(sd, f.attr)))
    rows("QE report", sgx.REPORT_BODY_FIELDS, sd.qe_report, base + 128)
    table.add_section()
    off = base + sgx.QE_AUTH_DATA_OFFSET
    table.add_row(str(off), str(sd.qe_auth_data_size), "QE auth data", sd.qe_auth_data.hex())
    off += sd.qe_auth_data_size
    cd = sd.certification_data
    table.add_row(str(off), "2", "certification data type", str(cd.type))
    table.add_row(str(off + 2), "4", "certification data size", str(cd.size))
    console.print(table)

    if cd.pck_chain_pem:
        chain = Table(title="PCK certificate chain (as found in the quote)")
        for col in ("#", "subject", "issuer", "valid from", "valid until", "SHA-256"):
            chain.add_column(col, overflow="fold")
        from cryptography.hazmat.primitives import hashes

        for i, c in enumerate(cd.certificates()):
            chain.add_row(
                str(i),
                visible_markup(sgx.common_name(c.subject)),  # names in the quote's certificates: anyone's text
                visible_markup(sgx.common_name(c.issuer)),
                c.not_valid_before_utc.isoformat(),
                c.not_valid_after_utc.isoformat(),
                c.fingerprint(hashes.SHA256()).hex(),
            )
        console.print(chain)
    else:
        console.print(f"certification data (type {cd.type}): {cd.data.hex()}")


@app.command()
def verify(
    file: Path = typer.Argument(..., help=FILE_HELP),
    evidence_type: Optional[str] = typer.Option(None, "--type", help=TYPE_HELP),
    trust_root: Optional[list[Path]] = typer.Option(
        None,
        "--trust-root",
        help="SGX: trust this root (PEM/DER certificate or PEM public key) instead of the "
        "shipped Intel SGX Root CA. Repeatable. Needed for simulated evidence (duet controller sim-root).",
    ),
    policy: Optional[Path] = typer.Option(
        None, "--policy", help="SGX: policy TOML (docs/policy.md). Default: any enclave, but never a debug enclave."
    ),
    at: Optional[str] = typer.Option(
        None,
        "--now",
        "--at",
        help="Check certificate (and token) validity at this ISO time (e.g. 2025-01-01T00:00:00Z) instead of now.",
    ),
    report_data: Optional[str] = typer.Option(None, "--report-data", help="SGX: expected REPORTDATA, 128 hex digits."),
    qe_identity: Optional[Path] = typer.Option(
        None, "--qe-identity", help="SGX, TDX: Intel's QE (TDX: TD_QE) identity JSON (PCS qe/identity)."
    ),
    tcb_info: Optional[Path] = typer.Option(
        None, "--tcb-info", help="SGX, TDX: Intel's SGX (TDX) TCB info JSON for the platform's FMSPC."
    ),
    pck_crl: Optional[Path] = typer.Option(None, "--pck-crl", help="SGX, TDX: the PCK CRL (DER, PEM or hex)."),
    root_crl: Optional[Path] = typer.Option(None, "--root-crl", help="SGX, TDX: the Intel root CA CRL (DER, PEM or hex)."),
    vcek: Optional[Path] = typer.Option(None, "--vcek", help="SNP: the VCEK or VLEK certificate (DER or PEM; AMD KDS)."),
    chain: Optional[Path] = typer.Option(
        None,
        "--chain",
        help="SNP: the ASK/ASVK and ARK (PEM; AMD KDS cert_chain; default: the pinned roots' own). "
        "Azure SNP: the VCEK chain, as IMDS's JSON or PEM.",
    ),
    td_quote: Optional[Path] = typer.Option(None, "--td-quote", help="Azure TDX: the TD quote IMDS made from the report."),
    roots: Optional[Path] = typer.Option(
        None,
        "--roots",
        help="CVM evidence: also trust these roots (PEM), e.g. `duet controller sim-root --state-dir DIR --cvm` "
        "for SIMULATED evidence. AMD's and Intel's are always trusted.",
    ),
    maa_instance: Optional[str] = typer.Option(None, "--maa-instance", help="MAA token: the instance URL it must come from."),
    maa_jwks: Optional[Path] = typer.Option(
        None, "--maa-jwks", help="MAA token: that instance's signing keys (its /certs JSON)."
    ),
    host_key: Optional[Path] = typer.Option(
        None, "--host-key", help="CVM evidence: the SSH host key (OpenSSH .pub line) the report data must bind."
    ),
    nonce: Optional[str] = typer.Option(
        None, "--nonce", help="CVM evidence: the nonce the report data must bind (64 hex digits)."
    ),
    vm_id: Optional[str] = typer.Option(None, "--vm-id", help="CVM evidence: the VM id the cloud created (Azure)."),
    cvm_policy: Optional[Path] = typer.Option(
        None, "--cvm-policy", help="CVM evidence: policy TOML (docs/policy.md). Default: none; the claims are shown, not judged."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Verify evidence offline, step by step: signatures to a pinned root, then (where asked) report data
    binding and policy; say which step failed. Collateral not given is reported as not evaluated."""
    from duet.cli import cvm_evidence

    detected = _evidence(file, evidence_type)
    given = {
        "--trust-root": bool(trust_root),
        "--policy": policy is not None,
        "--report-data": report_data is not None,
        "--qe-identity": qe_identity is not None,
        "--tcb-info": tcb_info is not None,
        "--pck-crl": pck_crl is not None,
        "--root-crl": root_crl is not None,
        "--vcek": vcek is not None,
        "--chain": chain is not None,
        "--td-quote": td_quote is not None,
        "--roots": roots is not None,
        "--maa-instance": maa_instance is not None,
        "--maa-jwks": maa_jwks is not None,
        "--host-key": host_key is not None,
        "--nonce": nonce is not None,
        "--vm-id": vm_id is not None,
        "--cvm-policy": cvm_policy is not None,
    }
    cvm_evidence.refuse_inapplicable(detected.type, given)
    now = _time(at)
    if detected.type != "sgx":
        options = cvm_evidence.CvmOptions(
            now=now,
            vcek=vcek,
            chain=chain,
            td_quote=td_quote,
            roots=roots,
            qe_identity=qe_identity,
            tcb_info=tcb_info,
            pck_crl=pck_crl,
            root_crl=root_crl,
            maa_instance=maa_instance,
            maa_jwks=maa_jwks,
            host_key=host_key,
            nonce=nonce,
            vm_id=vm_id,
            cvm_policy=cvm_policy,
            as_json=as_json,
        )
        cvm_evidence.verify(detected, options)

    from duet.attestation import sgx
    from duet.errors import DuetError

    usage = _usage
    try:
        if trust_root:
            trusted = [sgx.load_trust_root(p.read_bytes(), str(p)) for p in trust_root]
        else:
            trusted = [sgx.intel_sgx_root_key()]
        pol = sgx.Policy.load(policy) if policy else sgx.DEFAULT_POLICY
        collateral = sgx.load_collateral(qe_identity=qe_identity, tcb_info=tcb_info, pck_crl=pck_crl, root_crl=root_crl)
        expected_rd = None
        if report_data is not None:
            try:
                expected_rd = bytes.fromhex(report_data)
            except ValueError:
                raise usage("--report-data is not hex") from None
            if len(expected_rd) != 64:
                raise usage(f"--report-data must be 64 bytes (128 hex digits), got {len(expected_rd)}")
    except OSError as exc:
        raise usage(f"cannot read {exc.filename}: {exc.strerror}") from None
    except UnicodeDecodeError:  # Policy.load reads text and lets this through
        raise usage(f"--policy {policy} is not UTF-8 text (a TOML file)") from None
    except DuetError as exc:
        raise usage(f"[{exc.code}] {exc.message}") from None

    verdict = sgx.verify_evidence(
        _read_quote(detected, file),
        trusted_root_keys=trusted,
        now=now,
        report_data=expected_rd,
        policy=pol,
        collateral=collateral,
    )
    failure = verdict.failure
    result: dict[str, Any] = {
        "ok": verdict.ok,
        "failed_step": failure.step if failure else None,
        "code": failure.code if failure else None,
        "message": failure.message if failure else verdict.signatures.message,
        "checked_at": now.isoformat(),
        "trusted_roots": [sgx.spki_sha256(k) for k in trusted],
        "pck_chain": list(verdict.signatures.pck_chain),
        "steps": [{"step": s.step, "ok": s.ok, "code": s.code, "message": s.message} for s in verdict.steps],
    }
    if verdict.signatures.ok and verdict.quote is not None:
        body = verdict.quote.report_body
        result["enclave"] = {
            "mr_enclave": body.mr_enclave.hex(),
            "mr_signer": body.mr_signer.hex(),
            "isv_prod_id": body.isv_prod_id,
            "isv_svn": body.isv_svn,
            "debug": body.debug,
            "report_data": body.report_data.hex(),
        }
        result["policy"] = [c._asdict() for c in verdict.policy]

    if as_json:
        typer.echo(json.dumps(result, indent=2))
    else:
        from rich.console import Console

        escape = visible_markup  # messages may quote the evidence: shown as text, escapes visible
        console = Console()
        for step in verdict.steps:
            if step.ok is False:
                console.print(f"[bold red]✗ {step.step}[/]: " + escape(f"[{step.code}] {step.message}"))
                if step.step == sgx.STEP_PARSE:
                    break
            elif step.step == sgx.STEP_PARSE or (step.step == sgx.STEP_REPORT_DATA and expected_rd is None):
                continue  # shown only when it fails; asked for only with --report-data
            elif step.ok:
                console.print(f"[green]✓ {step.step}[/]")
            elif step.message:
                console.print(f"[dim]- {step.step}: {escape(step.message)}[/]")  # e.g. not evaluated (no TCB info given)
            else:
                console.print(f"[dim]- {step.step} (not reached)[/]")
        for c in verdict.policy:
            mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
            console.print(f"   {mark} {c.check}: " + escape(f"expected {c.expected}, found {c.actual}"))
        if result["ok"]:
            console.print("[bold green]quote verified[/]" + ("" if trust_root else " (Intel SGX Root CA)"))
    raise typer.Exit(0 if result["ok"] else 1)
