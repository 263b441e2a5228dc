"""``duet evidence show|verify`` for confidential-VM evidence: SEV-SNP reports, TDX quotes, Azure
vTPM (HCL) reports, Azure Attestation tokens and duet's CVM evidence bundles.

:mod:`duet.cli.evidence` reads the file, tells its kind (:mod:`duet.attestation.detect`) and hands
anything but an SGX quote to :func:`show` or :func:`verify` here. Nothing here decides whether
evidence holds: the kind's verifier runs its steps, :func:`duet.attestation.cvm_evidence.judge`
adds the binding, VM identity and policy steps (the same call the controller and the audit
make), and this module prints what they said.

Everything that comes from the evidence (fields, claims, certificate names, runtime-data JSON,
token claims, and the verifiers' messages that quote them) is printed through
:func:`~duet.cli.output.visible_markup`: evidence is whatever an attacker made it, and must not
move, clear or retitle a terminal. ``--json`` output is ASCII (``json.dumps`` escapes the rest).

Exit status, as :mod:`duet.cli.evidence` documents it: 0 the evidence verified (and, where asked,
is bound and acceptable); 1 it does not; 2 the input or an option is unusable, including a
certificate or quote the user must supply and did not (``--vcek`` for an SNP report, ``--chain``
for an Azure SNP report, ``--td-quote`` for an Azure TDX report, ``--maa-instance`` and
``--maa-jwks`` for a token): such evidence has not failed, it cannot be judged yet. A bundle
lacking a certificate exits 1: the CVM's evidence is incomplete, and no option supplies it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from duet.cli.output import visible, visible_markup

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from duet.attestation.bundle import CvmRoots, EvidenceBundle
    from duet.attestation.cvm import CvmClaims
    from duet.attestation.cvm_policy import CvmPolicy
    from duet.attestation.detect import Detected
    from duet.attestation.layout import Field
    from duet.attestation.sgx.collateral import Collateral
    from duet.attestation.steps import PolicyCheck, StepVerdict

CVM_TYPES = ("snp", "tdx", "azure-hcl", "maa", "bundle")
_COLLATERAL_TYPES = ("sgx", "tdx", "azure-hcl")
APPLIES: dict[str, tuple[str, ...]] = {
    "--trust-root": ("sgx",),
    "--policy": ("sgx",),
    "--report-data": ("sgx",),
    "--qe-identity": _COLLATERAL_TYPES,
    "--tcb-info": _COLLATERAL_TYPES,
    "--pck-crl": _COLLATERAL_TYPES,
    "--root-crl": _COLLATERAL_TYPES,
    "--vcek": ("snp",),
    "--chain": ("snp", "azure-hcl"),
    "--td-quote": ("azure-hcl",),
    "--roots": ("snp", "tdx", "azure-hcl", "bundle"),
    "--maa-instance": ("maa",),
    "--maa-jwks": ("maa",),
    "--host-key": CVM_TYPES,
    "--nonce": CVM_TYPES,
    "--vm-id": CVM_TYPES,
    "--cvm-policy": CVM_TYPES,
}
"""Which kinds of evidence each option of ``verify`` applies to. An option given for another
kind is refused, never ignored: ``--policy`` silently ignored on a CVM report would let a user
believe a policy held that was never applied."""
_INSTEAD = {
    "--policy": "--cvm-policy",
    "--report-data": "--host-key and --nonce",
    "--trust-root": "--roots",
    "--roots": "--trust-root",
}
_MISSING_INPUT = {
    "vcek_missing": "--vcek FILE (the VCEK certificate, DER or PEM)",
    "vlek_missing": "--vcek FILE (the VLEK certificate, DER or PEM)",
    "hcl_vcek_chain_missing": "--chain FILE (IMDS /metadata/THIM/amd/certification JSON, or the VCEK, ASK and ARK as PEM)",
    "hcl_td_quote_missing": "--td-quote FILE (the quote IMDS /acc/tdquote made from this report)",
}
"""Failure codes that mean "the user did not give what this evidence needs", with the option
that gives it (exit 2, not 1: the evidence was not found wanting)."""
_SERIAL_ZERO = "Parsed a serial number which wasn't positive"
"""AMD's VCEKs and VLEKs have serial number 0; cryptography warns on every one of them."""


def usage(message: str) -> typer.Exit:
    typer.echo(f"error: {visible(message)}", err=True)
    return typer.Exit(2)


def refuse_inapplicable(evidence_type: str, given: dict[str, bool]) -> None:
    """Exit 2 naming the options given that do not apply to ``evidence_type``."""
    wrong = [name for name, present in given.items() if present and evidence_type not in APPLIES[name]]
    if wrong:
        hints = [
            f"{name} applies to {', '.join(APPLIES[name])}" + (f"; use {_INSTEAD[name]}" if name in _INSTEAD else "")
            for name in wrong
        ]
        verb = "does" if len(wrong) == 1 else "do"
        raise usage(f"{', '.join(wrong)} {verb} not apply to this evidence ({evidence_type}): " + "; ".join(hints))


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_SERIAL_ZERO)
        yield


def _dumps(data: Any) -> str:
    def default(value: Any) -> Any:
        return value.hex() if isinstance(value, bytes | bytearray) else str(value)

    try:
        return json.dumps(data, indent=2, default=default)  # ensure_ascii: control characters escaped
    except (RecursionError, ValueError):
        typer.echo("error: the evidence is nested too deeply to print", err=True)
        raise typer.Exit(1) from None


def _read(path: Path, option: str, limit: int = 1024 * 1024) -> bytes:
    try:
        with path.open("rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise usage(f"cannot read {option} {path}: {exc.strerror}") from None
    if len(data) > limit:
        raise usage(f"{option} {path} is larger than {limit} bytes: not what this option takes")
    return data


# =============================================================================================
# verify
# =============================================================================================


@dataclass(frozen=True)
class CvmOptions:
    """What the user gave ``duet evidence verify`` for CVM evidence (paths not yet read)."""

    now: datetime
    vcek: Path | None = None
    chain: Path | None = None
    td_quote: Path | None = None
    roots: Path | None = None
    qe_identity: Path | None = None
    tcb_info: Path | None = None
    pck_crl: Path | None = None
    root_crl: Path | None = None
    maa_instance: str | None = None
    maa_jwks: Path | None = None
    host_key: Path | None = None
    nonce: str | None = None
    vm_id: str | None = None
    cvm_policy: Path | None = None
    as_json: bool = False


@dataclass(frozen=True)
class _Inputs:
    """The options read and checked: every failure to do so was an exit 2 before any verification."""

    roots: CvmRoots | None
    collateral: Collateral
    vcek: bytes | None
    chain: bytes | None
    td_quote: bytes | None
    jwks: Any
    host_key_blob: bytes | None
    nonce: bytes | None
    policy: CvmPolicy | None


def _load_inputs(evidence_type: str, opts: CvmOptions) -> _Inputs:
    from cryptography.exceptions import UnsupportedAlgorithm

    from duet.attestation import sgx
    from duet.attestation.bundle import load_cvm_roots
    from duet.attestation.cvm import NONCE_SIZE
    from duet.attestation.cvm_policy import CvmPolicy
    from duet.attestation.detect import unwrap
    from duet.errors import DuetError
    from duet.remote.ssh import host_key_blob

    if (opts.host_key is None) != (opts.nonce is None):
        raise usage("--host-key and --nonce go together: the binding (design §10) hashes both")
    if evidence_type == "maa" and (opts.maa_instance is None or opts.maa_jwks is None):
        raise usage(
            "an MAA token is checked against the instance it must come from: give --maa-instance URL and "
            "--maa-jwks FILE (that instance's /certs answer)"
        )
    nonce = None
    if opts.nonce is not None:
        try:
            nonce = bytes.fromhex(opts.nonce)
        except ValueError:
            raise usage("--nonce is not hex") from None
        if len(nonce) != NONCE_SIZE:
            raise usage(f"--nonce must be {NONCE_SIZE} bytes ({2 * NONCE_SIZE} hex digits), got {len(nonce)}")
    try:
        blob = None
        if opts.host_key is not None:
            line = _read(opts.host_key, "--host-key").decode("utf-8", "replace").strip()
            blob = host_key_blob(line)
        jwks = None
        if opts.maa_jwks is not None:
            try:
                jwks = json.loads(_read(opts.maa_jwks, "--maa-jwks"))
            except (ValueError, RecursionError):
                raise usage(f"--maa-jwks {opts.maa_jwks} is not JSON") from None
        try:
            roots = load_cvm_roots(_read(opts.roots, "--roots"), str(opts.roots)) if opts.roots is not None else None
        except (ValueError, TypeError, UnsupportedAlgorithm) as exc:  # a certificate that loads but whose key does not
            raise usage(f"--roots {opts.roots}: {exc}") from None
        collateral = sgx.load_collateral(
            qe_identity=opts.qe_identity, tcb_info=opts.tcb_info, pck_crl=opts.pck_crl, root_crl=opts.root_crl, tee="TDX"
        )
        try:
            policy = CvmPolicy.load(opts.cvm_policy) if opts.cvm_policy is not None else None
        except UnicodeDecodeError:  # CvmPolicy.load reads text and lets this through
            raise usage(f"--cvm-policy {opts.cvm_policy} is not UTF-8 text (a TOML file)") from None
    except DuetError as exc:
        raise usage(f"[{exc.code}] {exc.message}") from None
    td_quote = unwrap(_read(opts.td_quote, "--td-quote"), "tdx").data if opts.td_quote is not None else None
    return _Inputs(
        roots=roots,
        collateral=collateral,
        vcek=_read(opts.vcek, "--vcek") if opts.vcek is not None else None,
        chain=_read(opts.chain, "--chain") if opts.chain is not None else None,
        td_quote=td_quote,
        jwks=jwks,
        host_key_blob=blob,
        nonce=nonce,
        policy=policy,
    )


@dataclass(frozen=True)
class _Outcome:
    kind: str | None
    steps: tuple[StepVerdict, ...]
    claims: CvmClaims | None
    checks: tuple[PolicyCheck, ...]

    @property
    def failure(self) -> StepVerdict | None:
        return next((s for s in self.steps if s.ok is False), None)


def _run(detected: Detected, inputs: _Inputs, opts: CvmOptions) -> _Outcome:
    """The kind's verifier, then :func:`judge`; exits 2 where the user must supply more."""
    from duet.attestation.bundle import BundleFormatError, CvmRoots, parse_bundle, verify_bundle
    from duet.attestation.cvm_evidence import STEP_POLICY, Expected, judge
    from duet.attestation.cvm_policy import CvmPolicy
    from duet.attestation.steps import StepVerdict

    roots, now = inputs.roots, opts.now
    if detected.type == "snp":
        from duet.attestation.snp import verify_snp_report

        verdict = verify_snp_report(
            detected.data, vcek=inputs.vcek, chain=inputs.chain, trusted_roots=roots.amd if roots else None, now=now
        )
    elif detected.type == "tdx":
        from duet.attestation.tdx import verify_tdx_quote

        keys = roots.intel if roots else None
        verdict = verify_tdx_quote(detected.data, trusted_root_keys=keys, now=now, collateral=inputs.collateral)
    elif detected.type == "azure-hcl":
        from duet.attestation.azure import verify_azure_hcl

        verdict = verify_azure_hcl(
            detected.data,
            vcek_chain=inputs.chain,
            td_quote=inputs.td_quote,
            snp_trusted_roots=roots.amd if roots else None,
            tdx_trusted_root_keys=roots.intel if roots else None,
            tdx_collateral=inputs.collateral,
            now=now,
        )
    elif detected.type == "maa":
        from duet.attestation.azure import verify_maa_cvm_token

        assert opts.maa_instance is not None
        token = detected.data.decode("ascii", "replace")
        verdict = verify_maa_cvm_token(token, instance=opts.maa_instance, jwks=inputs.jwks, now=now)
    else:
        try:
            bundle = parse_bundle(detected.data)
        except BundleFormatError as exc:
            return _Outcome(None, (StepVerdict("parse", False, exc.code, exc.message),), None, ())
        verdict = verify_bundle(bundle, roots=roots or CvmRoots(), now=now)

    failure = verdict.failure
    if detected.type != "bundle" and failure is not None and failure.code in _MISSING_INPUT:
        raise usage(f"[{failure.code}] {failure.message}. Give it with {_MISSING_INPUT[failure.code]}")

    no_policy = CvmPolicy(allow_debug=True, allow_migration=True, source="no policy")
    judged = judge(verdict, Expected(inputs.host_key_blob, inputs.nonce, opts.vm_id), inputs.policy or no_policy)
    steps, checks = judged.steps, judged.policy
    if inputs.policy is None:  # judged by an empty policy, which holds: say it was not asked
        not_asked = "not asked (no --cvm-policy: the measurements, TCB, debug and migration below are shown, not judged)"
        steps = tuple(replace(s, ok=None, message=not_asked) if s.step == STEP_POLICY and s.ok else s for s in steps)
        checks = ()
    return _Outcome(judged.kind, steps, judged.claims, checks)


def verify(detected: Detected, opts: CvmOptions) -> NoReturn:
    """Verify CVM evidence, print the verdict, exit 0/1/2."""
    from duet.attestation.cvm import binding

    inputs = _load_inputs(detected.type, opts)
    with _quiet():
        outcome = _run(detected, inputs, opts)
    failure = outcome.failure
    claims = outcome.claims
    expected_rd = binding(inputs.host_key_blob, inputs.nonce) if inputs.host_key_blob is not None and inputs.nonce else None
    if opts.as_json:
        result: dict[str, Any] = {
            "ok": failure is None,
            "type": detected.type,
            "kind": outcome.kind,
            "detected": detected.how,
            "failed_step": failure.step if failure else None,
            "code": failure.code if failure else None,
            "message": failure.message if failure else None,
            "checked_at": opts.now.isoformat(),
            "steps": [{"step": s.step, "ok": s.ok, "code": s.code, "message": s.message} for s in outcome.steps],
            "simulated": bool(claims and claims.simulated),
            "claims": {**claims.summary(), "fields": claims.fields} if claims else None,
            "binding": {
                "asked": expected_rd is not None,
                "host_key_sha256": hashlib.sha256(inputs.host_key_blob).hexdigest() if inputs.host_key_blob else None,
                "nonce": inputs.nonce.hex() if inputs.nonce else None,
                "expected_report_data": expected_rd.hex() if expected_rd else None,
            },
            "vm_id_expected": opts.vm_id,
            "policy": None,
        }
        if inputs.policy is not None:
            result["policy"] = {
                "source": inputs.policy.source,
                "sha256": inputs.policy.sha256,
                "checks": [c._asdict() for c in outcome.checks],
            }
        typer.echo(_dumps(result))
    else:
        from rich.console import Console

        _print_verdict(Console(), detected, outcome, opts, expected_rd)
    raise typer.Exit(0 if failure is None else 1)


def _print_verdict(console: Console, detected: Detected, outcome: _Outcome, opts: CvmOptions, expected_rd: bytes | None) -> None:
    from duet.attestation.detect import DESCRIPTIONS

    esc = visible_markup
    console.print(
        f"[bold]{DESCRIPTIONS[detected.type]}[/] ({esc(detected.how, one_line=True)}), checked at {opts.now.isoformat()}"
    )
    for step in outcome.steps:
        name = esc(step.step)
        if step.ok is False:
            console.print(f"[bold red]✗ {name} FAILED[/]: " + esc(f"[{step.code}] {step.message}", one_line=True))
        elif step.ok:
            console.print(f"[green]✓ {name}[/]" + (f": [dim]{esc(step.message, one_line=True)}[/]" if step.message else ""))
        elif step.message == "not reached":
            console.print(f"[dim]- {name} (not reached)[/]")
        else:
            console.print(f"[dim]- {name}: {esc(step.message, one_line=True)}[/]")  # not evaluated, not asked

    failure, claims = outcome.failure, outcome.claims
    if claims is not None:
        _print_claims(console, claims, outcome, expected_rd)
    if outcome.checks:
        console.print("[bold]policy[/]")
        for c in outcome.checks:
            mark = "[green]✓[/]" if c.ok else "[red]✗[/]"
            console.print(f"   {mark} {esc(c.check)}: " + esc(f"expected {c.expected}, found {c.actual}", one_line=True))
    if failure is None:
        simulated = claims is not None and claims.simulated
        console.print("[bold green]evidence verified[/]" + (" [bold yellow](SIMULATED)[/]" if simulated else ""))
        return
    console.print(f"[bold red]evidence NOT verified[/]: {esc(failure.step)} ({esc(failure.code or '')})")
    if failure.code == "untrusted_root":
        console.print(
            "[yellow]SIMULATED evidence (local CVMs) chains to roots only you can choose to trust: "
            "--roots FILE, from `duet controller sim-root --state-dir DIR --cvm`[/]"
        )


def _print_claims(console: Console, claims: CvmClaims, outcome: _Outcome, expected_rd: bytes | None) -> None:
    from rich.table import Table

    esc = visible_markup
    failure = outcome.failure
    verified = failure is None or failure.step.split(".")[0] in ("binding", "vm_identity", "policy")
    title = "claims" if verified else f"claims (NOT verified: the evidence failed at {esc(failure.step) if failure else ''})"
    if claims.simulated:
        console.print(
            "[bold yellow]SIMULATED[/]: signed by a root trusted with --roots, not by AMD or Intel: "
            "it proves nothing about hardware"
        )
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("claim")
    table.add_column("value", overflow="fold")
    signer = esc(claims.signer) + (" [bold yellow](SIMULATED)[/]" if claims.simulated else "")
    table.add_row("kind", f"{esc(claims.kind)} ({claims.platform.upper()})")
    table.add_row("signer", signer)
    for name, value in claims.measurements.items():
        table.add_row(esc(name), esc(value, one_line=True))
    table.add_row("TCB", esc(", ".join(f"{k} {v}" for k, v in claims.tcb.items()), one_line=True))
    table.add_row("debug", "[bold red]YES (the host can read and change its memory)[/]" if claims.debug else "no")
    table.add_row("migration", "[yellow]allowed[/]" if claims.migration_allowed else "not allowed")
    if claims.vmpl is not None:
        table.add_row("VMPL", str(claims.vmpl))
    table.add_row("VM id", esc(claims.vm_id, one_line=True) if claims.vm_id is not None else "[dim](this kind names none)[/]")
    binding = next((s for s in outcome.steps if s.step == "binding"), None)
    if expected_rd is None:
        note = "[dim](not judged: give --host-key and --nonce)[/]"
    elif binding is not None and binding.ok:
        note = "[green](binds the given host key and nonce)[/]"
    elif binding is not None and binding.ok is False:
        note = f"[red](does NOT bind the given host key and nonce, which give {expected_rd.hex()})[/]"
    else:
        note = "[dim](not reached)[/]"
    table.add_row("report data", f"{claims.report_data.hex() or '(none)'} {note}")
    for key, value in claims.fields.items():  # the scalar ones; all of them with --json
        if isinstance(value, str | int | bool) or (isinstance(value, list) and value and all(isinstance(v, str) for v in value)):
            shown = ", ".join(value) if isinstance(value, list) else str(value)
            table.add_row(f"[dim]{esc(key, one_line=True)}[/]", esc(shown, one_line=True))
    console.print(table)
    console.print("[dim](every field: --json, or `duet evidence show`)[/]")


def _compact(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, separators=(",", ":"), default=str)
    except (RecursionError, ValueError):
        return "(nested too deeply to show)"


# =============================================================================================
# show
# =============================================================================================


class _Rows:
    """One table of (offset, size, field, value); every cell shown as text, made visible."""

    def __init__(self, title: str, columns: tuple[str, str, str, str] = ("offset", "size", "field", "value")) -> None:
        from rich.table import Table

        self.table: Table = Table(title=visible_markup(title, one_line=True))
        for col in columns:
            self.table.add_column(col, overflow="fold")

    def section(self) -> None:
        self.table.add_section()

    def add(self, offset: int | str, size: int | str, name: str, value: str, *, markup: bool = False) -> None:
        cell = value if markup else visible_markup(value, one_line=True)
        self.table.add_row(str(offset), str(size), visible_markup(name, one_line=True), cell)

    def fields(
        self,
        table: Sequence[Field],
        buf: bytes,
        base: int,
        prefix: str = "",
        decorate: Callable[[Field, Any], str | None] | None = None,
        *,
        at: int | None = None,
    ) -> None:
        """Every row of a layout ``table`` read from ``buf`` at ``base``; shown at offset ``at``
        (default ``base``: the structure's place in the file)."""
        from duet.attestation.layout import read_fields

        values = read_fields(table, buf, base)
        shown_at = base if at is None else at
        for f in table:
            value = values[f.attr]
            text = decorate(f, value) if decorate is not None else None
            self.add(shown_at + f.offset, f.size, prefix + f.name, text if text is not None else _plain(f, value))


def _plain(f: Field, value: Any) -> str:
    if isinstance(value, bytes | bytearray):
        return value.hex()
    return str(value) if value < 10 else f"{value} ({value:#x})"


def _bits(value: int, names: Sequence[tuple[int, str]]) -> str:
    return ", ".join(name for bit, name in names if value >> bit & 1) or "none"


def _format_error(exc: Any) -> NoReturn:
    typer.echo(f"error [{visible(exc.code)}]: {visible(exc.message)}", err=True)
    raise typer.Exit(1)


def show(detected: Detected, as_json: bool) -> None:
    """Print every field of CVM evidence with its offset and spec name (``--json``: one object)."""
    shows: dict[str, Callable[[bytes], tuple[dict[str, Any], list[Any]]]] = {
        "snp": _snp,
        "tdx": _tdx,
        "azure-hcl": _hcl,
        "maa": _maa,
        "bundle": _bundle,
    }
    with _quiet():
        data, tables = shows[detected.type](detected.data)
    if as_json:
        typer.echo(_dumps({"type": detected.type, "detected": detected.how, **data}))
        return
    from rich.console import Console

    console = Console()
    for table in tables:
        console.print(table)


# --- SEV-SNP ---------------------------------------------------------------------------------


def _snp_rows(rows: _Rows, report: bytes, base: int = 0, prefix: str = "", *, at: int | None = None) -> None:
    """An SNP ATTESTATION_REPORT's rows (it parsed), bit fields and TCBs decoded by name."""
    from duet.attestation import snp
    from duet.attestation.snp.abi import POLICY_BITS, tcb_fields

    rep = snp.parse_report(report[base : base + snp.REPORT_SIZE])
    tcb_table = tcb_fields(rep.product)

    def decorate(f: Field, value: Any) -> str | None:
        if f.attr == "policy":
            policy = snp.decode_policy(value)
            bits = [(bit, name) for bit, name, _ in POLICY_BITS]
            return f"{value:#x}: ABI {policy['abi_major']}.{policy['abi_minor']}; {_bits(value, bits)}"
        if f.attr == "platform_info":
            return f"{value:#x}: {_bits(value, [(bit, name) for bit, name, _ in snp.PLATFORM_INFO_BITS])}"
        if f.attr == "signer_info":
            s = snp.SignerInfo.from_int(value)
            flags = [n for n, on in (("MASK_CHIP_KEY", s.mask_chip_key), ("AUTHOR_KEY_EN", s.author_key_en)) if on]
            return f"{value:#x}: SIGNING_KEY {s.kind}" + "".join(f", {n}" for n in flags)
        if f.attr.endswith("_tcb"):
            t = snp.TcbVersion.decode(value, rep.product)
            by_attr = t.to_dict()
            return f"{value:#018x}: " + ", ".join(f"{g.name} {by_attr[g.attr]}" for g in tcb_table if g.attr in by_attr)
        return None

    rows.fields(snp.REPORT_FIELDS, rep.raw, 0, prefix, decorate, at=base if at is None else at)
    rows.add("", "", f"{prefix}POLICY.DEBUG", "[bold red]YES[/]" if rep.debug else "no", markup=True)
    rows.add("", "", f"{prefix}POLICY.MIGRATE_MA", "allowed" if rep.migration_allowed else "not allowed")
    rows.add("", "", f"{prefix}product (from CPUID_FAM_ID, CPUID_MOD_ID)", rep.product or "unknown (VERSION 2)")


def _snp(data: bytes) -> tuple[dict[str, Any], list[Any]]:
    from duet.attestation import snp

    try:
        rep = snp.parse_report(data)
    except snp.SnpReportFormatError as exc:
        _format_error(exc)
    rows = _Rows(f"SEV-SNP attestation report ({len(data)} bytes, VERSION {rep.version}, signed by a {rep.signer.kind})")
    _snp_rows(rows, data)
    return rep.to_dict(), [rows.table]


# --- TDX -------------------------------------------------------------------------------------


def _qe_report_decorate(f: Field, value: Any) -> str | None:
    if f.name in ("ATTRIBUTES.FLAGS", "ATTRIBUTES.XFRM"):
        return f"{value:#018x}"
    if f.name == "MISCSELECT":
        return f"{value:#010x}"
    return None


def _tdx_tables(data: bytes, title_prefix: str = "") -> tuple[dict[str, Any], list[Any]]:
    from duet.attestation import sgx, tdx
    from duet.attestation.tdx.abi import BODY_DESCRIPTOR_FIELDS, HEADER_SIZE, SIGNATURE_DATA_HEAD_SIZE

    try:
        q = tdx.parse_tdx_quote(data)
    except tdx.TdxQuoteFormatError as exc:
        _format_error(exc)
    r = q.td_report
    rows = _Rows(
        f"{title_prefix}TDX quote v{q.version}, TD report 1.{0 if r.body_type == tdx.BODY_TYPE_TD_REPORT10 else 5} "
        f"({len(q.raw)} bytes, {q.trailing_bytes} trailing)"
    )

    def header(f: Field, value: Any) -> str | None:
        return f"{value:#x} (TDX)" if f.attr == "tee_type" and value == tdx.TEE_TYPE_TDX else None

    def body(f: Field, value: Any) -> str | None:
        if f.attr == "td_attributes":
            return f"{value.to_bytes(8, 'little').hex()}: {', '.join(tdx.td_attribute_names(value)) or 'none'}"
        if f.attr == "xfam":
            return bytes(value.to_bytes(8, "little")).hex()
        return None

    rows.fields(tdx.HEADER_FIELDS, q.raw, 0, "header ", header)
    if q.version == tdx.QUOTE_VERSION_5:
        rows.section()
        rows.fields(BODY_DESCRIPTOR_FIELDS, q.raw, HEADER_SIZE, "body descriptor ")
    rows.section()
    rows.fields(tdx.TD_REPORT_FIELDS[r.body_type], q.raw, q.body_offset, "TD report ", body)
    rows.add("", "", "TD report TDATTRIBUTES.DEBUG", "[bold red]YES[/]" if r.debug else "no", markup=True)
    len_at = q.body_offset + len(r.raw)
    sig_at = len_at + 4
    rows.section()
    rows.add(len_at, 4, "signature_data_len", str(q.signature_data_len))
    rows.fields(tdx.SIGNATURE_DATA_FIELDS, q.raw, sig_at)
    qe_at = sig_at + SIGNATURE_DATA_HEAD_SIZE
    qe = q.signature_data.qe_report_certification_data
    rows.section()
    rows.fields(sgx.REPORT_BODY_FIELDS, q.raw, qe_at, "QE report ", _qe_report_decorate)
    rows.add(qe_at + 384, 64, "QE report signature", qe.qe_report_signature.hex())
    rows.add(qe_at + 448, 2, "QE auth data size", str(qe.qe_auth_data_size))
    rows.add(qe_at + 450, qe.qe_auth_data_size, "QE auth data", qe.qe_auth_data.hex())
    inner_at = qe_at + 450 + qe.qe_auth_data_size
    rows.fields(sgx.CERT_DATA_HEADER_FIELDS, q.raw, inner_at, "QE ")
    tables: list[Any] = [rows.table]
    chain = _pck_chain_table(qe.certification_data)
    if chain is not None:
        tables.append(chain)
    return q.to_dict(), tables


def _pck_chain_table(cd: Any) -> Table | None:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes
    from rich.table import Table

    from duet.attestation import sgx

    if not cd.pck_chain_pem:
        return None
    chain = Table(title="PCK certificate chain (as found in the quote)")
    for col in ("#", "subject", "issuer", "valid from", "valid until", "SHA-256"):
        chain.add_column(col, overflow="fold")
    try:
        certificates = cd.certificates()
        for i, c in enumerate(certificates):
            chain.add_row(
                str(i),
                visible_markup(sgx.common_name(c.subject), one_line=True),  # anyone's text
                visible_markup(sgx.common_name(c.issuer), one_line=True),
                c.not_valid_before_utc.isoformat(),
                c.not_valid_after_utc.isoformat(),
                c.fingerprint(hashes.SHA256()).hex(),
            )
    except (ValueError, TypeError, UnsupportedAlgorithm, x509.DuplicateExtension, x509.InvalidVersion) as exc:
        chain.add_row("", visible_markup(f"does not parse: {exc}", one_line=True), "", "", "", "")
    return chain


def _tdx(data: bytes) -> tuple[dict[str, Any], list[Any]]:
    return _tdx_tables(data)


# --- Azure HCL report ------------------------------------------------------------------------


def _hcl(data: bytes) -> tuple[dict[str, Any], list[Any]]:
    from duet.attestation import azure, snp
    from duet.attestation.azure.hcl import (
        HW_REPORT_OFFSET,
        HW_REPORT_SIZE,
        RUNTIME_DATA_OFFSET,
        TDREPORT_SIZE,
        VARIABLE_DATA_OFFSET,
    )

    try:
        hcl = azure.parse_hcl_report(data)
    except azure.HclFormatError as exc:
        _format_error(exc)
    out = hcl.to_dict()
    rows = _Rows(
        f"Azure HCL report of a {hcl.platform.upper()} CVM ({len(data)} bytes, report_size {hcl.header.report_size}, "
        f"{hcl.trailing_bytes} bytes of padding)"
    )

    def header(f: Field, value: Any) -> str | None:
        return f"{value.hex()} ({value.decode('ascii', 'replace')})" if f.attr == "signature" else None

    rows.fields(azure.HEADER_FIELDS, hcl.raw, 0, "header ", header)
    rows.section()
    if hcl.platform == "snp":
        try:
            _snp_rows(rows, hcl.raw, HW_REPORT_OFFSET, "hw_report ")
            out["hw_report"] = snp.parse_report(hcl.hw_report).to_dict()
        except snp.SnpReportFormatError as exc:
            rows.add(HW_REPORT_OFFSET, HW_REPORT_SIZE, "hw_report", f"not a well-formed SNP report: {exc.message}")
            out["hw_report"] = {"error": exc.message}
    else:
        base = HW_REPORT_OFFSET
        rows.fields(azure.REPORTMACSTRUCT_FIELDS, hcl.raw, base, "TDREPORT REPORTMACSTRUCT.")
        rows.fields(azure.TEE_TCB_INFO_FIELDS, hcl.raw, base + 256, "TDREPORT TEE_TCB_INFO.")
        rows.add(base + 495, 17, "TDREPORT RESERVED", hcl.raw[base + 495 : base + 512].hex())
        rows.fields(azure.TDINFO_FIELDS, hcl.raw, base + 512, "TDREPORT TDINFO_STRUCT.")
        rows.add(base + TDREPORT_SIZE, HW_REPORT_SIZE - TDREPORT_SIZE, "hw_report (unused)", hcl.hw_report[TDREPORT_SIZE:].hex())
    rows.section()
    rows.fields(azure.RUNTIME_DATA_FIELDS, hcl.raw, RUNTIME_DATA_OFFSET, "runtime_data ")
    rows.add(VARIABLE_DATA_OFFSET, len(hcl.variable_data), "variable data (runtime JSON)", f"{len(hcl.variable_data)} bytes")
    runtime_rows = _Rows("runtime data, as written (not verified: `duet evidence verify` checks its hash)")
    try:
        runtime = azure.parse_runtime_data(hcl.variable_data)
        out["runtime_data_json"] = runtime.document
        runtime_rows.add(VARIABLE_DATA_OFFSET, "", "vm-configuration.vmUniqueId", runtime.vm_configuration.vm_unique_id)
        runtime_rows.add("", "", "user-data", runtime.user_data if runtime.user_data is not None else "(absent)")
        runtime_rows.add("", "", "keys", ", ".join(runtime.kids) or "(none)")
        for key, value in runtime.vm_configuration.to_dict().items():
            if key != "vmUniqueId":
                runtime_rows.add("", "", f"vm-configuration.{key}", _compact(value))
        for key, value in runtime.document.items():
            if key not in ("keys", "vm-configuration", "user-data"):
                runtime_rows.add("", "", key, _compact(value))
    except azure.RuntimeDataError as exc:
        out["runtime_data_json"] = {"error": exc.message}
        runtime_rows.add(VARIABLE_DATA_OFFSET, len(hcl.variable_data), "runtime data", f"unusable: {exc.message}")
        runtime_rows.add("", "", "as text", hcl.variable_data.decode("utf-8", "replace"))
    return out, [rows.table, runtime_rows.table]


# --- MAA token -------------------------------------------------------------------------------


def _flatten(value: Any, path: str, out: list[tuple[str, str]], depth: int = 0) -> None:
    if isinstance(value, dict) and value and depth < 16:
        for key, item in value.items():
            _flatten(item, f"{path}.{key}" if path else str(key), out, depth + 1)
    elif isinstance(value, list) and value and depth < 16:
        for i, item in enumerate(value):
            _flatten(item, f"{path}[{i}]", out, depth + 1)
    else:
        out.append((path, _compact(value)))


def _maa(data: bytes) -> tuple[dict[str, Any], list[Any]]:
    from duet.attestation.detect import MalformedToken, jwt_parts

    try:
        header, claims, signature = jwt_parts(data.decode("ascii", "replace"))
    except MalformedToken as exc:
        _format_error(exc)
    rows = _Rows(
        "Azure Attestation token: header and claims as written (NOT verified: use `duet evidence verify`)",
        ("part", "size", "claim", "value"),
    )
    for section, doc in (("header", header), ("claims", claims)):
        flat: list[tuple[str, str]] = []
        _flatten(doc, "", flat)
        rows.section()
        for name, value in flat:
            rows.add(section, "", name, value)
    rows.section()
    rows.add("signature", len(signature), "signature", signature.hex())
    return {"header": header, "claims": claims, "signature": signature.hex(), "verified": False}, [rows.table]


# --- duet CVM evidence bundle ----------------------------------------------------------------


def _bundle(data: bytes) -> tuple[dict[str, Any], list[Any]]:
    from duet.attestation.bundle import BundleFormatError, parse_bundle

    try:
        bundle = parse_bundle(data)
    except BundleFormatError as exc:
        _format_error(exc)
    rows = _Rows(f"duet CVM evidence bundle ({len(data)} bytes), as the CVM printed it")
    rows.add("", "", "format", "duet-cvm-evidence/v1")
    rows.add("", "", "source", bundle.source)
    if bundle.provider:
        rows.add("", "", "provider", bundle.provider)
    rows.add("", "", "report_data (what the guest says it asked for; not verified)", bundle.report_data)
    blobs: dict[str, dict[str, Any]] = {
        name: {"size": len(b), "sha256": hashlib.sha256(b).hexdigest()} for name, b in bundle.blobs.items()
    }
    for name, blob in bundle.blobs.items():
        rows.add("", len(blob), name, f"SHA-256 {blobs[name]['sha256']}")
    if bundle.vcek_chain is not None:
        rows.add("", len(bundle.vcek_chain), "vcek_chain", "present")
    out: dict[str, Any] = {"source": bundle.source, "provider": bundle.provider, "report_data": bundle.report_data}
    out["blobs"] = blobs
    tables: list[Any] = [rows.table]
    evidence, inner = _bundle_evidence(bundle)
    out["evidence"] = evidence
    return out, tables + inner


def _bundle_evidence(bundle: EvidenceBundle) -> tuple[dict[str, Any], list[Any]]:
    shows: list[tuple[str, Callable[[bytes], tuple[dict[str, Any], list[Any]]]]] = []
    if bundle.source == "azure-vtpm":
        shows.append(("hcl_report", _hcl))
        if "td_quote" in bundle.blobs:
            shows.append(("td_quote", _tdx))
    else:
        shows.append(("outblob", _snp if bundle.platform == "snp" else _tdx))
    evidence: dict[str, Any] = {}
    tables: list[Any] = []
    for name, fn in shows:
        evidence[name], more = fn(bundle.blobs[name])
        tables += more
    aux = bundle.blobs.get("auxblob")
    if aux:
        evidence["auxblob"], table = _cert_table(aux)
        tables.append(table)
    return evidence, tables


def _cert_table(aux: bytes) -> tuple[dict[str, Any], Table]:
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from rich.table import Table

    from duet.attestation import snp
    from duet.errors import VerificationError

    table = Table(title="GHCB certificate table (auxblob), as the host handed it to the guest")
    for col in ("entry", "size", "subject", "valid until"):
        table.add_column(col, overflow="fold")
    try:
        entries = snp.parse_cert_table(aux).entries
    except snp.CertTableFormatError as exc:
        table.add_row("", "", visible_markup(f"does not parse: {exc.message}", one_line=True), "")
        return {"error": exc.message}, table
    out: dict[str, Any] = {}
    for name, blob in entries.items():
        try:
            cert = snp.load_certificates(blob, name)[0]
            subject, until = cert.subject.rfc4514_string(), cert.not_valid_after_utc.isoformat()
        except (VerificationError, ValueError, TypeError, IndexError, UnsupportedAlgorithm, x509.InvalidVersion) as exc:
            subject, until = f"not a certificate ({type(exc).__name__})", ""
        out[name] = {"size": len(blob), "subject": subject, "not_valid_after": until}
        table.add_row(visible_markup(name, one_line=True), str(len(blob)), visible_markup(subject, one_line=True), until)
    return out, table
