"""``duet verify``: verify the controller's attestation and pin it for every later command.

Exit status: 0 verified and pinned; 3 (untrusted) when a check failed, or the controller is not
the one pinned before or shows another owner set than the pinned one
(:meth:`duet.client.TrustStore.pin_verified`; ``--replace`` pins it anyway); 2 when an option is unusable.
"""

import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from duet.cli import output
from duet.cli.context import CliContext

if TYPE_CHECKING:
    from rich.console import Console

    from duet.client import ControllerVerdict


def verify(
    ctx: typer.Context,
    policy: Annotated[
        Optional[Path], typer.Option(help="Policy TOML (docs/policy.md). Default: any enclave, never a debug one.")
    ] = None,
    trust_root: Annotated[
        Optional[list[Path]],
        typer.Option(
            "--trust-root",
            help="Trust this root (PEM) for SIMULATED SGX evidence, e.g. the output of "
            "`duet controller sim-root`. Repeatable. Real SGX evidence is always checked against Intel's root.",
        ),
    ] = None,
    maa_url: Annotated[Optional[str], typer.Option(help="Also have Azure Attestation (this instance) judge the quote.")] = None,
    save: Annotated[Optional[Path], typer.Option(help="Keep the evidence, identity and verdict in this directory.")] = None,
    replace: Annotated[
        bool,
        typer.Option(
            help="Pin this controller even if another one, or the same one with another owner set, is pinned for the URL."
        ),
    ] = False,
    qe_identity: Annotated[Optional[Path], typer.Option(help="Intel's QE identity JSON (PCS qe/identity).")] = None,
    tcb_info: Annotated[Optional[Path], typer.Option(help="Intel's TCB info JSON for the platform's FMSPC.")] = None,
    pck_crl: Annotated[Optional[Path], typer.Option(help="The PCK CRL (DER, PEM or hex).")] = None,
    root_crl: Annotated[Optional[Path], typer.Option(help="The Intel root CA CRL (DER, PEM or hex).")] = None,
) -> None:
    """Verify the controller (evidence, identity binding, policy, TLS certificate) and pin it.
    Without collateral files, the TCB level and PCK revocation are reported as not evaluated."""
    from duet.attestation import sgx as dcap
    from duet.attestation.sgx import Policy
    from duet.client import TrustError, TrustStore, verify_controller

    context: CliContext = ctx.obj
    with output.errors(context):
        try:
            pol = Policy.load(policy) if policy else Policy()
            roots = [dcap.load_trust_root(p.read_bytes(), str(p)) for p in trust_root or []]
            collateral = dcap.load_collateral(qe_identity=qe_identity, tcb_info=tcb_info, pck_crl=pck_crl, root_crl=root_crl)
        except OSError as exc:
            raise output.UsageError(f"cannot read {exc.filename}: {exc.strerror}", code="unreadable") from None
        verdict = verify_controller(
            context.url, policy=pol, trust_roots=roots, insecure=context.insecure, maa_url=maa_url, collateral=collateral
        )
        trust = TrustStore.default()
        result = verdict.to_dict()
        if verdict.ok and verdict.pin is not None:
            try:
                trust.pin_verified(context.url, verdict.pin, replace=replace)
            except TrustError as exc:  # another controller or owner set (ControllerChanged), a damaged store
                result.update(ok=False, failed_step="pin", code=exc.code, message=exc.message, pinned=None)
            else:
                result["pinned_in"] = str(trust.path)
        if save is not None:
            result["saved_in"] = str(_save(save, verdict, result))
        output.emit(context, result, lambda console: _render(console, verdict, result, context))
        if not result["ok"]:
            raise typer.Exit(output.EXIT_UNTRUSTED)


def _save(directory: Path, verdict: "ControllerVerdict", result: dict[str, Any]) -> Path:
    """Everything needed to re-check the verdict later, offline (``duet evidence verify``)."""
    import base64

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "attestation.json").write_text(json.dumps(verdict.answer, indent=2, sort_keys=True) + "\n")
    if verdict.identity is not None:
        (directory / "identity.json").write_text(json.dumps(verdict.identity, indent=2, sort_keys=True) + "\n")
    try:
        quote = verdict.answer["result"]["evidence"].get("quote")
        if quote:
            (directory / "quote.bin").write_bytes(base64.b64decode(quote))
    except (KeyError, TypeError, AttributeError, ValueError):
        pass
    if verdict.tls_cert_der:
        from duet.client import certificate_pem

        (directory / "tls-certificate.pem").write_text(certificate_pem(verdict.tls_cert_der))
    if verdict.maa_token:
        (directory / "maa-token.jwt").write_text(verdict.maa_token + "\n")
    (directory / "verdict.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return directory


def _render(console: "Console", verdict: "ControllerVerdict", result: dict[str, Any], context: CliContext) -> None:
    from rich.table import Table

    escape = output.visible_markup  # what the controller says is shown as text, escapes visible (issue 12, item 8)
    tee = result["tee"] or "unknown"
    if verdict.simulated:
        console.print(
            "[bold yellow on black] SIMULATED SGX [/] evidence: signed by a locally generated root, not by "
            "Intel; it is accepted only with a root YOU pass (--trust-root), and it proves the protocol "
            "works, not that the code is protected."
        )
    elif tee == "none":
        console.print("[bold red]TEE: none[/] — this controller is NOT attested; nothing proves which code it runs.")
    console.print(
        f"Controller [bold]{escape(str(result['controller']))}[/] at {escape(context.url)}  TEE: [bold]{escape(tee)}[/]"
    )
    for check in verdict.checks:
        mark = {True: "[green]✓[/]", False: "[bold red]✗[/]", None: "[yellow]-[/]"}[check.ok]
        code = f" [{check.code}]" if check.code else ""
        console.print(f" {mark} {check.step}: " + escape(check.detail + code))
    from duet.client import STEPS

    done = {c.step for c in verdict.checks}

    for step in STEPS:
        if step not in done and verdict.failure is not None:
            console.print(f" [dim]- {step} (not reached)[/]")
    for title, rows in (("Measurements (quote)", verdict.policy), ("Measurements (Azure Attestation)", verdict.maa_policy)):
        if rows:
            table = Table(title=title, title_justify="left")
            for column in ("", "measurement", "expected (policy)", "found"):
                table.add_column(column, overflow="fold")
            for row in rows:
                table.add_row(
                    "[green]✓[/]" if row.ok else "[bold red]✗[/]", escape(row.check), escape(row.expected), escape(row.actual)
                )
            console.print(table)
    if verdict.owners:
        console.print("Owner keys (may administer CVMs while in-update):")
        for owner in verdict.owners:
            console.print(f"  {escape(owner)}")
    thresholds = (verdict.approval_policy or {}).get("thresholds")
    if isinstance(thresholds, dict):
        needing = {op: n for op, n in sorted(thresholds.items()) if n != 1}
        console.print(
            "Approvals: "
            + (
                ", ".join(
                    f"{escape(str(op))} needs {escape(str(n))} of {len(verdict.owners)} owners" for op, n in needing.items()
                )
                + "; any other operation, one owner"
                if needing
                else "any one owner may act alone (no approval policy)"
            )
        )
    if result["ok"]:
        console.print(
            f"[bold green]verified[/]: pinned controller {escape(str(result['controller'])[:16])}… "
            f"({'SIMULATED SGX' if verdict.simulated else escape(tee)}) in {escape(str(result.get('pinned_in')))}"
        )
        if not verdict.attested:
            console.print("[bold yellow]warning[/]: pinned WITHOUT attestation (--insecure).")
    else:
        console.print(
            f"[bold red]NOT VERIFIED[/] ({escape(str(result['failed_step']))}, {escape(str(result['code']))}): "
            + escape(str(result["message"]))
            + "\nNothing was pinned."
        )
    if result.get("saved_in"):
        console.print(f"Evidence, identity and verdict saved in {escape(result['saved_in'])}")
