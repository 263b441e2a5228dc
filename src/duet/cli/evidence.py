"""``duet evidence``: look at and verify SGX DCAP v3 quotes offline.

Heavy modules (cryptography, rich) are imported inside the commands so that ``duet --help``
and every other command start fast.

Exit status of ``verify``: 0 only when the signatures verify, (if given) the report data
matches and the policy holds, checked in that order by the same pipeline as ``duet verify``;
1 when the evidence fails; 2 when the input or an option is unusable.
"""

import json
import sys
from datetime import UTC
from pathlib import Path
from typing import Any, Optional

import typer

from duet.cli.output import visible, visible_markup

app = typer.Typer(help="Inspect and verify SGX DCAP v3 quotes offline.", no_args_is_help=True)


def _read_quote(path: Path) -> bytes:
    from duet.attestation.sgx import decode_quote_text

    try:
        data = sys.stdin.buffer.read() if str(path) == "-" else path.read_bytes()
    except OSError as exc:
        typer.echo(f"error: cannot read {path}: {exc.strerror}", err=True)
        raise typer.Exit(2) from None
    try:
        return decode_quote_text(data)
    except ValueError as exc:
        typer.echo(f"error: {path}: {visible(exc)}", err=True)
        raise typer.Exit(2) from None


def _value_text(value: Any, name: str = "") -> str:
    if isinstance(value, bytes):
        return value.hex()
    if name in ("ATTRIBUTES.FLAGS", "ATTRIBUTES.XFRM", "MISCSELECT"):
        return f"{value:#018x}" if name.startswith("ATTRIBUTES") else f"{value:#010x}"
    return str(value)


@app.command()
def show(
    file: Path = typer.Argument(..., help="Quote: binary, base64, hex, or evidence JSON; '-' for stdin."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Print every field of a quote, with its offset, as named in the spec."""
    from rich.console import Console
    from rich.table import Table

    from duet.attestation import sgx

    try:
        q = sgx.parse_quote(_read_quote(file))
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
    file: Path = typer.Argument(..., help="Quote: binary, base64, hex, or evidence JSON; '-' for stdin."),
    trust_root: Optional[list[Path]] = typer.Option(
        None,
        "--trust-root",
        help="Trust this root (PEM/DER certificate or PEM public key) instead of the "
        "shipped Intel SGX Root CA. Repeatable. Needed for simulated evidence (duet controller sim-root).",
    ),
    policy: Optional[Path] = typer.Option(
        None, "--policy", help="Policy TOML (docs/policy.md). Default: any enclave, but never a debug enclave."
    ),
    at: Optional[str] = typer.Option(
        None, "--at", help="Check certificate validity at this ISO time (e.g. 2025-01-01T00:00:00Z) instead of now."
    ),
    report_data: Optional[str] = typer.Option(None, "--report-data", help="Expected REPORTDATA, 128 hex digits."),
    qe_identity: Optional[Path] = typer.Option(None, "--qe-identity", help="Intel's QE identity JSON (PCS qe/identity)."),
    tcb_info: Optional[Path] = typer.Option(None, "--tcb-info", help="Intel's TCB info JSON for the platform's FMSPC."),
    pck_crl: Optional[Path] = typer.Option(None, "--pck-crl", help="The PCK CRL (DER, PEM or hex)."),
    root_crl: Optional[Path] = typer.Option(None, "--root-crl", help="The Intel root CA CRL (DER, PEM or hex)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Verify a quote offline: signatures to a pinned root, then report data, then policy; say which step failed.
    Without collateral files, the TCB level and PCK revocation are reported as not evaluated."""
    from datetime import datetime

    from duet.attestation import sgx
    from duet.errors import DuetError

    def usage(msg: str) -> typer.Exit:
        typer.echo(f"error: {visible(msg)}", err=True)
        return typer.Exit(2)

    try:
        now = datetime.now(UTC)
        if at is not None:
            try:
                now = datetime.fromisoformat(at.replace("Z", "+00:00"))
            except ValueError:
                raise usage(f"--at {at!r} is not an ISO 8601 time") from None
            if now.tzinfo is None:
                now = now.replace(tzinfo=UTC)
        if trust_root:
            roots = [sgx.load_trust_root(p.read_bytes(), str(p)) for p in trust_root]
        else:
            roots = [sgx.intel_sgx_root_key()]
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
    except DuetError as exc:
        raise usage(f"[{exc.code}] {exc.message}") from None

    verdict = sgx.verify_evidence(
        _read_quote(file), trusted_root_keys=roots, now=now, report_data=expected_rd, policy=pol, collateral=collateral
    )
    failure = verdict.failure
    result: dict[str, Any] = {
        "ok": verdict.ok,
        "failed_step": failure.step if failure else None,
        "code": failure.code if failure else None,
        "message": failure.message if failure else verdict.signatures.message,
        "checked_at": now.isoformat(),
        "trusted_roots": [sgx.spki_sha256(k) for k in roots],
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
