"""``duet witness``: run a transparency-log witness (C2SP tlog-witness) that cosigns the checkpoints
of the logs it is told about, each only if consistent with what it cosigned before
(docs/witness.md).

The witness's code (cryptography, uvicorn) is imported inside the commands, so every other
``duet`` command starts as fast as before.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from duet.cli import output
from duet.cli.context import CliContext
from duet.witness import DEFAULT_PORT, ServeSettings

app = typer.Typer(
    help="Run a transparency-log witness (C2SP tlog-witness) that cosigns ledger checkpoints.",
    no_args_is_help=True,
)

_DEFAULTS = ServeSettings()

StateDir = Annotated[
    Path,
    typer.Option(help="The witness's directory: its key (witness.key, 0600), its state (state.json), its lock."),
]
Name = Annotated[
    Optional[str],
    typer.Option(
        help="The witness's name (its key name, in its vkey and cosignatures), set at its first start: default "
        "<this host's fully qualified name>/witness. Later starts use the recorded name; a different one is refused."
    ),
]


def _context(ctx: typer.Context) -> CliContext:
    return ctx.obj if isinstance(ctx.obj, CliContext) else CliContext(url="", key_path=None, json=False)


@app.command("serve")
def serve(
    ctx: typer.Context,
    state_dir: StateDir,
    log: Annotated[
        list[str],
        typer.Option(
            "--log",
            help="A log to witness: ORIGIN=VKEY (the log's Ed25519 note vkey), or a bare VKEY whose key name is the "
            "origin. Repeat for several logs; repeat an origin to trust several keys for it.",
        ),
    ],
    listen: Annotated[str, typer.Option(help="HOST:PORT to listen on.")] = f"{_DEFAULTS.host}:{DEFAULT_PORT}",
    name: Name = None,
    max_body_bytes: Annotated[
        int, typer.Option(help="Largest add-checkpoint body; larger: 413, refused before it is read.")
    ] = _DEFAULTS.max_body_bytes,
    body_timeout: Annotated[
        float, typer.Option(help="Seconds for a request body to arrive in full; then 408.")
    ] = _DEFAULTS.body_timeout_s,
    max_header_bytes: Annotated[
        int, typer.Option(help="Largest request head (request line and headers); larger: 431.")
    ] = _DEFAULTS.max_header_bytes,
    max_header_count: Annotated[
        int, typer.Option(help="Most header lines in one request; more: 431.")
    ] = _DEFAULTS.max_header_count,
    max_request_line: Annotated[
        int, typer.Option(help="Longest request target in bytes; longer: 414.")
    ] = _DEFAULTS.max_request_line_bytes,
    header_timeout: Annotated[
        float, typer.Option(help="Seconds for a request head to arrive in full; then 408.")
    ] = _DEFAULTS.header_timeout_s,
    idle_timeout: Annotated[float, typer.Option(help="Seconds a request body may pause; then 408.")] = _DEFAULTS.idle_timeout_s,
    keep_alive_timeout: Annotated[
        float, typer.Option(help="Seconds an idle connection is kept open between requests.")
    ] = _DEFAULTS.keep_alive_timeout_s,
    max_connections: Annotated[
        int, typer.Option(help="Client connections open at once; more are refused.")
    ] = _DEFAULTS.max_connections,
    max_connections_per_address: Annotated[
        int, typer.Option(help="Client connections open at once from one IP address; more are refused.")
    ] = _DEFAULTS.max_connections_per_address,
    tls_cert: Annotated[
        Optional[Path], typer.Option(help="Serve HTTPS with this certificate chain (PEM); with --tls-key.")
    ] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="The TLS certificate's private key (PEM).")] = None,
) -> None:
    """Serve POST /add-checkpoint (C2SP tlog-witness) for the logs given with --log."""
    import logging

    from duet.witness.server import serve as serve_witness
    from duet.witness.state import WitnessState, configured_logs

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = _host_port(listen)
    if (tls_cert is None) != (tls_key is None):
        raise typer.BadParameter("--tls-cert and --tls-key go together")
    settings = ServeSettings(
        host=host,
        port=port,
        max_body_bytes=max_body_bytes,
        body_timeout_s=body_timeout,
        max_header_bytes=max_header_bytes,
        max_header_count=max_header_count,
        max_request_line_bytes=max_request_line,
        header_timeout_s=header_timeout,
        idle_timeout_s=idle_timeout,
        keep_alive_timeout_s=keep_alive_timeout,
        max_connections=max_connections,
        max_connections_per_address=max_connections_per_address,
        tls_cert=tls_cert,
        tls_key=tls_key,
    )
    with output.errors(_context(ctx)):
        if not log:
            raise output.UsageError("give at least one --log ORIGIN=VKEY: a witness of no log cosigns nothing", code="no_logs")
        logs = configured_logs(log)
        with WitnessState.open(state_dir, name=name) as state:
            serve_witness(state, logs, settings)


@app.command("key")
def key(ctx: typer.Context, state_dir: StateDir, name: Name = None) -> None:
    """Print the witness's verifier key (vkey, cosignature/v1): what logs and auditors trust.

    Made with the witness's key and state if the directory has none yet (as its first start
    would), so it can be configured before the witness first serves."""
    from duet.witness.state import WitnessState

    context = _context(ctx)
    with output.errors(context):
        state = WitnessState.open(state_dir, name=name, read_only=True)
        output.emit_plain(context, {"name": state.name, "vkey": state.vkey}, lambda: state.vkey + "\n")


def _host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise typer.BadParameter("--listen must be HOST:PORT, e.g. 127.0.0.1:6038")
    return host.strip("[]"), int(port)
