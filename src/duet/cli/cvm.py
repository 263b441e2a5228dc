"""``duet cvm ...``: the owner's and the users' commands for CVMs.

Every string from the controller (CVM ids, types, providers, modes, commands, outputs, failure
reasons) is printed through :func:`output.visible` (``visible_markup`` where rich markup is
parsed): what an owner or a CVM wrote is shown, never obeyed by the terminal.
"""

from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from duet.cli import output
from duet.cli.context import CliContext
from duet.cli.proposals import exit_if_proposed
from duet.protocol import lifecycle as lc

if TYPE_CHECKING:
    from rich.console import Console

    from duet.client import DuetClient

app = typer.Typer(help="Start, command, mark, inspect and stop CVMs.", no_args_is_help=True)

MODES = lc.MARKABLE_MODES
PROVIDERS = lc.PROVIDER_NAMES


@app.command()
def start(
    ctx: typer.Context,
    cvm_type: Annotated[str, typer.Option("--type", help="snp or tdx.")] = "snp",
    provider: Annotated[
        Optional[str],
        typer.Option(help="local, azure, aws or gcp (one the controller enabled); default: the controller's first."),
    ] = None,
    no_wait: Annotated[bool, typer.Option(help="Return the job id at once instead of waiting.")] = False,
) -> None:
    """Start a CVM; shows progress until it is in-update."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        if cvm_type not in lc.CVM_TYPES:
            raise output.UsageError(f"unknown CVM type {cvm_type!r}; use snp or tdx", code="bad_cvm_type")
        if provider is not None and provider not in PROVIDERS:
            raise output.UsageError(f"unknown provider {provider!r}; use {', '.join(PROVIDERS)}", code="bad_provider")
        accepted = client.start(cvm_type, provider=provider)
        exit_if_proposed(context, accepted)
        if no_wait:
            output.emit(
                context,
                accepted,
                lambda console: console.print(f"job {_markup(accepted['job_id'])} started CVM {_markup(accepted['cvm_id'])}"),
            )
            return
        job = _wait(context, client, accepted["job_id"], f"Starting CVM {_short(accepted['cvm_id'])}…")
        state = client.state(accepted["cvm_id"])["cvm"]
        result = {"cvm_id": accepted["cvm_id"], "mode": state["mode"], "job": job}
        if job["status"] != "succeeded":
            raise _job_error(job)
        output.emit(
            context,
            result,
            lambda console: console.print(
                f"[green]CVM {_markup(accepted['cvm_id'])} is {_markup(state['mode'])}[/] "
                f"(type {_markup(state['type'])}, provider {_markup(state['provider'])})"
            ),
        )


@app.command()
def run(
    ctx: typer.Context,
    cvm_id: Annotated[str, typer.Argument(help="The CVM's id.")],
    command: Annotated[Optional[list[str]], typer.Argument(help="One command, after --.")] = None,
    cmd: Annotated[Optional[list[str]], typer.Option("--cmd", help="A command; repeat for several.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Per-command timeout in seconds.")] = None,
    output_limit: Annotated[Optional[int], typer.Option(help="Bytes kept per output stream.")] = None,
) -> None:
    """Run commands on an in-update CVM: duet cvm run ID -- CMD, or --cmd CMD --cmd CMD."""
    context: CliContext = ctx.obj
    commands = list(cmd or []) + ([" ".join(command)] if command else [])
    with output.errors(context), context.client(owner=True) as client:
        if not commands:
            raise output.UsageError("no command given: duet cvm run ID -- CMD, or --cmd CMD", code="no_command")
        result = client.run(cvm_id, commands, timeout_s=timeout, output_limit=output_limit)
        exit_if_proposed(context, result)
        output.emit(context, result, lambda console: _render_results(console, result["results"]))
        if any(item["exit_status"] != 0 for item in result["results"]):
            raise typer.Exit(output.EXIT_REFUSED)


@app.command()
def mark(
    ctx: typer.Context,
    cvm_id: Annotated[str, typer.Argument(help="The CVM's id.")],
    mode: Annotated[str, typer.Argument(help="in-service or in-update.")],
    final: Annotated[
        bool, typer.Option(help="One way: never back to in-update; the controller gives up its own access.")
    ] = False,
) -> None:
    """Mark a CVM in-service (commands refused) or in-update (commands allowed)."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        if mode not in MODES:
            raise output.UsageError(f"unknown mode {mode!r}; use in-service or in-update", code="bad_mode")
        result = client.mark(cvm_id, mode, final=final)
        exit_if_proposed(context, result)
        output.emit(
            context,
            result,
            lambda console: console.print(
                f"CVM {_short(cvm_id)}… is [bold]{_markup(result['mode'])}[/]"
                + _final_text(result)
                + ("" if result["changed"] else " (unchanged)")
            ),
        )


@app.command()
def state(
    ctx: typer.Context,
    cvm_id: Annotated[str, typer.Argument(help="The CVM's id.")],
    long: Annotated[bool, typer.Option("--long", help="Fetch full outputs and check them against their hashes.")] = False,
) -> None:
    """A CVM's mode and its recent commands (output hashes); --long: its whole history, read from
    the ledger page by page, with full outputs checked against their hashes."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client() as client:
        answer = client.state(cvm_id)
        commands = answer["commands"]
        if long:
            from duet.ledger.history import command_rows, mode_rows

            entries = client.entries(cvm=cvm_id)  # every entry verified against the signed head
            commands = answer["commands"] = command_rows(entries)
            answer["modes"] = mode_rows(entries)
            for row in commands:
                for stream in ("stdout", "stderr"):
                    digest = row.get(f"{stream}_sha256")
                    if digest:
                        row[stream] = client.blob(digest).decode(errors="replace")
        counts = answer.get("counts") or {}
        output.emit_plain(context, answer, lambda: _state_text(answer["cvm"], commands, long, counts))


@app.command("list")
def list_cvms(ctx: typer.Context) -> None:
    """All CVMs this controller knows."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client() as client:
        cvms = client.list_cvms()
        rows = [
            [
                cvm["cvm_id"],
                cvm["type"],
                cvm["provider"],
                cvm["mode"],
                _final_text(cvm).strip(" ()"),
                _attested_word(cvm.get("attestation")),
                cvm["created_at"],
            ]
            for cvm in cvms
        ]
        headers = ["CVM id", "type", "provider", "mode", "final", "attested", "created"]
        output.emit_plain(context, {"cvms": cvms}, lambda: output.plain_table(headers, rows))


@app.command()
def stop(
    ctx: typer.Context,
    cvm_id: Annotated[str, typer.Argument(help="The CVM's id.")],
) -> None:
    """Stop a CVM and delete all its resources; its SSH key is destroyed."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        accepted = client.stop(cvm_id)
        exit_if_proposed(context, accepted)
        job = _wait(context, client, accepted["job_id"], f"Stopping CVM {_short(cvm_id)}…")
        if job["status"] != "succeeded":
            raise _job_error(job)
        output.emit(
            context,
            {"cvm_id": cvm_id, "mode": "stopped", "job": job},
            lambda console: console.print(f"CVM {_short(cvm_id)}… stopped; its resources are deleted."),
        )


@app.command()
def attest(
    ctx: typer.Context,
    cvm_id: Annotated[str, typer.Argument(help="The CVM's id.")],
) -> None:
    """Have the controller attest a running CVM now: its hardware evidence, bound to its SSH host
    key, judged by the CVM policy and recorded in the ledger. Exits 1 if it fails."""
    context: CliContext = ctx.obj
    with output.errors(context), context.client(owner=True) as client:
        result = client.attest(cvm_id)
        output.emit_plain(context, result, lambda: _attest_text(result))
        if not result["ok"]:
            raise typer.Exit(1)


# --- helpers -------------------------------------------------------------------------------


def _attest_text(result: dict[str, Any]) -> str:
    def line(text: object) -> str:
        return output.visible(text, one_line=True)

    marks = {True: "ok  ", False: "FAIL", None: "-   "}
    steps = "".join(f"  {marks[s['ok']]} {line(s['step'])}: {line(s['message'])}\n" for s in result["steps"])
    verdict = "passed" if result["ok"] else "FAILED"
    return f"attestation of CVM {line(result['cvm_id'])} {verdict}\n{steps}" + attestation_text(result["attestation"])


def _attested_word(attestation: dict[str, Any] | None) -> str:
    """One word for ``cvm list``: NONE (opted out), pending, FAILED, yes, SIMULATED."""
    if not attestation or not attestation.get("required"):
        return "NONE"
    last = attestation.get("last")
    if last is None:
        return "pending"
    if not last.get("ok"):
        return "FAILED"
    return "SIMULATED" if last.get("simulated") else "yes"


def attestation_text(attestation: dict[str, Any] | None) -> str:
    """The attestation lines of ``cvm state`` and ``cvm attest`` (plain text, made visible)."""

    def line(text: object) -> str:
        return output.visible(text, one_line=True)

    if not attestation or not attestation.get("required"):
        return "attestation: NONE (started with --no-cvm-attestation: nothing proves what this CVM is)\n"
    last = attestation.get("last")
    if last is None:
        return "attestation: required, not yet attested\n"
    simulated = " SIMULATED" if last.get("simulated") else ""
    if not last.get("ok"):
        return (
            f"attestation:{simulated} FAILED at {line(last.get('step'))} ({line(last.get('code'))}) on {line(last.get('time'))}\n"
        )
    text = f"attestation:{simulated} passed ({line(last.get('kind'))}, signer {line(last.get('signer'))}) on {line(last.get('time'))}"
    text += f", valid until {line(attestation.get('valid_until'))}\n"
    for name, value in sorted((last.get("measurements") or {}).items()):
        text += f"  {line(name)}: {line(value)}\n"
    tcb = ", ".join(f"{line(k)} {line(v)}" for k, v in sorted((last.get("tcb") or {}).items()))
    return text + (f"  tcb: {tcb}\n" if tcb else "")


def _markup(text: object) -> str:
    """Untrusted text for a rich markup line: escapes visible, markup shown as text."""
    return output.visible_markup(text, one_line=True)


def _short(cvm_id: object) -> str:
    """The first 16 characters of a CVM id, for rich markup."""
    return _markup(str(cvm_id)[:16])


def _wait(context: CliContext, client: "DuetClient", job_id: str, title: str) -> dict[str, Any]:
    """``title`` is rich markup (made safe by the caller); each step the controller names is shown as text."""
    if context.json:
        return client.wait_job(job_id)
    with output.err_console.status(title) as status:
        return client.wait_job(job_id, on_step=lambda step: status.update(f"{title} {_markup(step)}"))


def _job_error(job: dict[str, Any]) -> Exception:
    from duet.errors import DuetError

    error = job.get("error") or {}
    return DuetError(
        f"job {job['job_id']} {job['status']}: {error.get('message', 'no reason given')}", code=error.get("code", "job_failed")
    )


def _render_results(console: "Console", results: list[dict[str, Any]]) -> None:
    for item in results:
        status = item["exit_status"]
        colour = "green" if status == 0 else "red"
        note = " (timed out)" if item["timed_out"] else ""
        console.print(
            f"[bold]$ {_markup(item['command'])}[/]  [{colour}]exit {_markup(status)}{note}[/]  {item['duration_ms']:.1f} ms"
        )
        for stream, style in (("stdout", None), ("stderr", "red")):
            text = output.visible(item[stream] or "")
            if text:
                console.print(text, end="" if text.endswith("\n") else "\n", style=style, markup=False, highlight=False)


def _final_text(cvm: dict[str, Any]) -> str:
    """ " (final)", or " (final, lockdown pending)" while the controller has not verified that it
    locked itself out: the owner must know the CVM may still be reachable."""
    if not cvm.get("final"):
        return ""
    return " (final, lockdown pending)" if cvm.get("lockdown") == "pending" else " (final)"


def _state_text(cvm: dict[str, Any], commands: list[dict[str, Any]], long: bool, counts: dict[str, Any]) -> str:
    """Plain text (no rich): every string from the controller through :func:`output.visible`;
    table cells are made visible by :func:`output.plain_table`."""

    def line(text: object) -> str:
        return output.visible(text, one_line=True)

    head = (
        f"CVM {line(cvm['cvm_id'])}  type {line(cvm['type'])}  provider {line(cvm['provider'])}  mode {line(cvm['mode'])}"
        + (" " + _final_text(cvm) if cvm["final"] else "")
        + (f"\nfailure: {line(cvm['failure'])}" if cvm.get("failure") else "")
        + (f"\nlockdown not verified yet (retrying): {line(cvm['lockdown_error'])}" if cvm.get("lockdown_error") else "")
        + "\n"
        + attestation_text(cvm.get("attestation"))
        + "\n"
    )

    def exit_text(item: dict[str, Any]) -> str:
        return line(item["status"] if item.get("exit_status") is None else item["exit_status"])

    if not long and len(commands) < counts.get("commands", 0):
        head += f"{counts['commands']} commands in all; the last {len(commands)} shown (--long: all of them)\n\n"
    if not long:
        rows = [
            [
                str(item["seq"]),
                item["command"],
                exit_text(item),
                f"{item.get('duration_ms', 0):.1f}",
                (item.get("stdout_sha256") or "")[:16],
            ]
            for item in commands
        ]
        return head + output.plain_table(["seq", "command", "exit", "ms", "stdout sha256"], rows)
    blocks = []
    for item in commands:
        block = (
            f"[{line(item['seq'])}] $ {line(item['command'])}  (exit {exit_text(item)}, {item.get('duration_ms', 0):.1f} ms)\n"
        )
        for stream in ("stdout", "stderr"):
            if item.get(stream):
                # Made visible first: then only newlines split lines (\x0b, \x1c, U+2028... are escapes by then).
                block += "".join(f"    {stream[3:]}| {text}\n" for text in output.visible(item[stream]).splitlines())
        blocks.append(block)
    return head + "".join(blocks)
