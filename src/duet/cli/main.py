"""The ``duet`` command.

Global options come before the subcommand: ``duet --url URL --key KEY --json cvm run ...``.
Heavy modules (the server, the cloud SDKs, pydantic) are imported inside the commands that
need them, so a client call starts fast.
"""

from pathlib import Path
from typing import Annotated, Optional

import typer

from duet.cli import audit, cvm, output, proposals, verify
from duet.cli import witness as witness_cli
from duet.cli.context import CliContext
from duet.controller.settings import Settings  # the server's defaults, stated once

app = typer.Typer(
    name="duet",
    help="duet: a trustworthy, attested controller for confidential VMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
controller_app = typer.Typer(help="Run a duet controller.", no_args_is_help=True)
app.add_typer(cvm.app, name="cvm")
app.add_typer(controller_app, name="controller")
app.add_typer(witness_cli.app, name="witness")  # docs/witness.md


def _mount_evidence() -> None:
    from duet.cli.evidence import app as evidence_app

    app.add_typer(evidence_app, name="evidence", help="Show and verify attestation evidence offline.")


_mount_evidence()
app.command("audit")(audit.audit)
app.command("verify")(verify.verify)
app.command("proposals")(proposals.proposals)  # docs/approvals.md
app.command("approve")(proposals.approve)
app.command("reject")(proposals.reject)
app.command("withdraw")(proposals.withdraw)
app.add_typer(proposals.owners_app, name="owners")
app.add_typer(proposals.policy_app, name="policy")


@app.command(
    "seed-client",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def seed_client(ctx: typer.Context) -> None:
    """The seed's client (its options, its output) over the seed protocol; see docs/seed-api.md."""
    from duet.cli.seed_client import main as seed_client_main

    args = list(ctx.args)
    if ctx.obj is not None and ctx.obj.insecure and "--insecure" not in args:
        args.append("--insecure")  # `duet --insecure seed-client ...` as well as DUET_INSECURE
    raise typer.Exit(seed_client_main(args))


@app.callback()
def main(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(envvar="DUET_URL", help="Controller URL.")] = f"https://{Settings.host}:{Settings.port}",
    key: Annotated[Optional[Path], typer.Option(envvar="DUET_KEY", help="Owner private key (PEM) for owner operations.")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object per command, for scripts.")] = False,
    insecure: Annotated[
        bool,
        typer.Option(
            envvar="DUET_INSECURE",
            help="Use a controller that was not verified with `duet verify` (or plain HTTP); warned about on every run.",
        ),
    ] = False,
) -> None:
    ctx.obj = CliContext(url=url, key_path=key, json=json_output, insecure=insecure)


@app.command()
def keygen(
    ctx: typer.Context,
    out: Annotated[Path, typer.Option(help="Where to write the private key; the public key goes to OUT.pub.")],
    key_type: Annotated[str, typer.Option("--type", help="ed25519 (default), ecdsa (P-256) or rsa.")] = "ed25519",
    force: Annotated[bool, typer.Option(help="Overwrite an existing key.")] = False,
) -> None:
    """Create an owner key pair (private key mode 0600)."""
    from duet import keys

    context: CliContext = ctx.obj
    with output.errors(context):
        if key_type not in keys.KEY_TYPES:
            raise output.UsageError(f"unknown key type {key_type!r}; use ed25519, ecdsa or rsa", code="bad_key_type")
        if out.exists() and not force:
            raise output.UsageError(f"{out} exists; pass --force to overwrite it", code="key_exists")
        key = keys.generate(key_type)  # type: ignore[arg-type]
        pub_path = keys.write_key_pair(out, key)
        key_id = keys.key_id(key.public_key())
        output.emit(
            context,
            {"private_key": str(out), "public_key": str(pub_path), "key_id": key_id, "type": key_type},
            lambda console: console.print(
                f"Wrote [bold]{out}[/] (private, mode 0600) and [bold]{pub_path}[/].\nKey id: {key_id}"
            ),
        )


@controller_app.command("serve")
def controller_serve(
    state_dir: Annotated[Path, typer.Option(help="Where the controller keeps its database and sealed keys.")],
    owner_key: Annotated[
        Optional[list[Path]],
        typer.Option(
            help="An owner's public key (PEM); repeat for several owners. Pinned at first start; later starts may omit it."
        ),
    ] = None,
    provider: Annotated[
        Optional[list[str]],
        typer.Option(help="Enable a provider: local, azure, aws or gcp; repeat for several (the first is the default)."),
    ] = None,
    tee: Annotated[str, typer.Option(help="none, simulated or gramine.")] = "none",
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = f"{Settings.host}:{Settings.port}",
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = Settings.max_body_bytes,
    command_timeout: Annotated[float, typer.Option(help="Default per-command timeout in seconds.")] = Settings.command_timeout_s,
    output_limit: Annotated[int, typer.Option(help="Default bytes kept per output stream of a command.")] = Settings.output_limit,
    lockdown_timeout: Annotated[
        float, typer.Option(help="Seconds one attempt of the --final lockdown may take on the CVM.")
    ] = Settings.lockdown_timeout_s,
    lockdown_retry: Annotated[
        float, typer.Option(help="Seconds before an unverified --final lockdown is retried (doubling, up to 300).")
    ] = Settings.lockdown_retry_s,
    seed_api: Annotated[
        bool,
        typer.Option(
            "--seed-api",
            help="Also serve the seed's protocol (/quote, /start_cvm, ...) for its clients. It has NO replay protection.",
        ),
    ] = False,
    seed_allow_replays: Annotated[
        bool,
        typer.Option(
            "--seed-allow-replays",
            help="With the seed's protocol: accept a start_cvm or mark_cvm in-update request already accepted (refused as "
            "a replay by default). Whoever copied one can then start CVMs or reopen them; warned and ledgered.",
        ),
    ] = False,
    seed_listen: Annotated[
        Optional[str],
        typer.Option(
            help="HOST:PORT: serve the seed's protocol there over plain HTTP, as its clients expect (implies --seed-api).",
        ),
    ] = None,
    no_tls: Annotated[
        bool, typer.Option("--no-tls", help="Serve plain HTTP (development only; clients need --insecure).")
    ] = False,
    maa_url: Annotated[
        Optional[str],
        typer.Option(help="Have Azure Attestation check this controller's quote at start; refuse to serve if it fails."),
    ] = None,
    sealed_dir: Annotated[
        Optional[Path], typer.Option(help="With --tee gramine: the encrypted mount for sealed state (default /duet/sealed).")
    ] = None,
    env_file: Annotated[
        Optional[Path],
        typer.Option(help="Provider settings as KEY=VALUE lines, e.g. the seed's azure_config.env; the environment is read too."),
    ] = None,
    max_header_bytes: Annotated[
        int, typer.Option(help="Largest request head (request line and headers) in bytes; larger: 431.")
    ] = Settings.max_header_bytes,
    max_header_count: Annotated[
        int, typer.Option(help="Most header lines in one request; more: 431.")
    ] = Settings.max_header_count,
    max_request_line: Annotated[
        int, typer.Option(help="Longest request target (path and query) in bytes; longer: 414.")
    ] = Settings.max_request_line_bytes,
    header_timeout: Annotated[
        float,
        typer.Option(
            help="Seconds for a request head to arrive in full, from the connection's start or its first byte; then 408."
        ),
    ] = Settings.header_timeout_s,
    idle_timeout: Annotated[
        float, typer.Option(help="Seconds a request body may pause while the controller waits for it; then 408.")
    ] = Settings.idle_timeout_s,
    keep_alive_timeout: Annotated[
        float, typer.Option(help="Seconds an idle connection is kept open between requests.")
    ] = Settings.keep_alive_timeout_s,
    max_connections: Annotated[
        int,
        typer.Option(
            help="Client connections open at once, all listeners together; more are refused (503, or closed before TLS)."
        ),
    ] = Settings.max_connections,
    max_connections_per_address: Annotated[
        int, typer.Option(help="Client connections open at once from one IP address; more are refused likewise.")
    ] = Settings.max_connections_per_address,
    tls_handshake_timeout: Annotated[
        float, typer.Option(help="Seconds for a client's TLS handshake; then the connection is closed.")
    ] = Settings.tls_handshake_timeout_s,
    request_output_budget: Annotated[
        int,
        typer.Option(help="Bytes of output one run request keeps, all its commands together; past it outputs are cut."),
    ] = Settings.request_output_budget,
    cvm_output_quota: Annotated[
        int,
        typer.Option(help="Bytes of output kept per CVM within the retention period; at it, commands are refused."),
    ] = Settings.cvm_output_quota,
    output_retention_days: Annotated[
        float,
        typer.Option(help="Days outputs are kept before they are pruned (their hashes stay in the ledger); 0: forever."),
    ] = Settings.output_retention_days or 0.0,
    output_prune_interval: Annotated[
        float, typer.Option(help="Seconds between two pruning passes.")
    ] = Settings.output_prune_interval_s,
    seed_state_max_bytes: Annotated[
        int, typer.Option(help="Bytes of output text in the seed's long state; the rest is named by hash.")
    ] = Settings.seed_state_max_bytes,
    cvm_policy: Annotated[
        Optional[Path],
        typer.Option(help="The CVM policy (TOML, docs/policy.md): measurements, minimum TCB, debug, migration, evidence age."),
    ] = None,
    approval_policy: Annotated[
        Optional[Path],
        typer.Option(
            help="The approval policy (TOML, docs/approvals.md): how many distinct owners must sign each operation. "
            "Pinned at first start; later starts take it from sealed state (changed only by a governed policy.change).",
        ),
    ] = None,
    max_pending_proposals: Annotated[
        int, typer.Option(help="Proposals one owner may have waiting at once.")
    ] = Settings.max_pending_proposals,
    proposal_sweep: Annotated[
        float, typer.Option(help="Seconds between two passes recording expired proposals.")
    ] = Settings.proposal_sweep_s,
    no_cvm_attestation: Annotated[
        bool,
        typer.Option(
            "--no-cvm-attestation",
            help="Start CVMs without attesting them; the provider's host key is pinned unverified. Recorded; shown as unattested.",
        ),
    ] = False,
    trust_simulated_cvm: Annotated[
        bool,
        typer.Option(
            "--trust-simulated-cvm",
            help="Accept the SIMULATED hardware evidence of local CVMs (development and demos: it proves nothing).",
        ),
    ] = False,
    witness: Annotated[
        Optional[list[str]],
        typer.Option(
            metavar="URL=VKEY",
            help="A C2SP tlog-witness: its submission URL and cosignature/v1 vkey; each new checkpoint is sent to it and "
            "its cosignature served with the checkpoint (docs/transparency.md). Repeat for several witnesses.",
        ),
    ] = None,
    publish_tiles: Annotated[
        Optional[str],
        typer.Option(
            metavar="URL",
            help="Publish the ledger as C2SP tiles as it grows: azure://ACCOUNT/CONTAINER[/PREFIX], "
            "s3://BUCKET[/PREFIX][?endpoint=URL], or a directory; anyone audits it with `duet audit --tiles`.",
        ),
    ] = None,
    witness_quorum: Annotated[
        Optional[int],
        typer.Option(
            metavar="K",
            help="How many witnesses make a checkpoint witnessed (/v1/ledger/checkpoint?witnessed=true); default: all.",
        ),
    ] = None,
) -> None:
    """Serve the controller over HTTPS (protocol v1 under /v1, OpenAPI at /docs; the seed's protocol with --seed-api)."""
    import dataclasses
    import logging

    from duet.controller.app import serve
    from duet.controller.settings import read_env_file

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = _host_port(listen, "--listen")
    seed_address = _host_port(seed_listen, "--seed-listen") if seed_listen else None
    with output.errors(CliContext(url="", key_path=None, json=False)):
        provider_env = read_env_file(env_file) if env_file else {}
        if witness or witness_quorum is not None:
            from duet.controller.witnessing import configure_witnesses, parse_witness_option

            witnesses = tuple(parse_witness_option(value) for value in witness or ())
            configure_witnesses(witnesses, witness_quorum)  # refused here, before anything starts
        else:
            witnesses = ()
    settings = Settings(
        provider_env=provider_env,
        state_dir=state_dir,
        owner_keys=tuple(owner_key or ()),
        providers=tuple(dict.fromkeys(provider or ["local"])),
        tee=tee,
        host=host,
        port=port,
        max_body_bytes=max_body_bytes,
        command_timeout_s=command_timeout,
        output_limit=output_limit,
        lockdown_timeout_s=lockdown_timeout,
        lockdown_retry_s=lockdown_retry,
        lockdown_retry_max_s=max(lockdown_retry, Settings.lockdown_retry_max_s),
        seed_api=seed_api or seed_address is not None,
        seed_allow_replays=seed_allow_replays,
        seed_listen=seed_address,
        tls=not no_tls,
        maa_url=maa_url,
        max_header_bytes=max_header_bytes,
        max_header_count=max_header_count,
        max_request_line_bytes=max_request_line,
        header_timeout_s=header_timeout,
        idle_timeout_s=idle_timeout,
        keep_alive_timeout_s=keep_alive_timeout,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        tls_handshake_timeout_s=tls_handshake_timeout,
        request_output_budget=request_output_budget,
        cvm_output_quota=cvm_output_quota,
        output_retention_days=output_retention_days or None,
        output_prune_interval_s=output_prune_interval,
        seed_state_max_bytes=seed_state_max_bytes,
        cvm_policy=cvm_policy,
        approval_policy=approval_policy,
        proposal_sweep_s=proposal_sweep,
        max_pending_proposals=max_pending_proposals,
        cvm_attestation=not no_cvm_attestation,
        trust_simulated_cvm=trust_simulated_cvm,
        witnesses=witnesses,
        witness_quorum=witness_quorum,
        publish_tiles=publish_tiles,
    )
    if sealed_dir:
        settings = dataclasses.replace(settings, gramine_sealed_dir=sealed_dir)
    with output.errors(CliContext(url="", key_path=None, json=False)):
        serve(settings)


def _host_port(value: str, option: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise typer.BadParameter(f"{option} must be HOST:PORT, e.g. 127.0.0.1:6037")
    return host, int(port)


@controller_app.command("sim-root")
def controller_sim_root(
    state_dir: Annotated[Path, typer.Option(help="The controller's state directory.")],
    cvm: Annotated[
        bool,
        typer.Option(
            "--cvm", help="Print the roots of local CVMs' SIMULATED hardware instead (AMD ASK and ARK, Intel-style root)."
        ),
    ] = False,
) -> None:
    """Print the SIMULATED root certificate that a --tee simulated controller's quotes chain to."""
    from duet.tee.simulated import simulated_root_pem

    if cvm:
        from duet.providers.local_tsm import roots_pem

        typer.echo(roots_pem(state_dir / "local-cvms" / ".simulated-hardware").decode(), nl=False)
        return

    typer.echo(simulated_root_pem(state_dir).decode(), nl=False)


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Keep the temporary state directory for inspection.")] = False,
) -> None:
    """Play the whole lifecycle on local CVMs, narrated; exits 0 only if every step behaved."""
    from duet.cli.demo import run_demo

    raise typer.Exit(run_demo(keep=keep))


def run() -> None:
    app()
