"""How the CLI speaks: one JSON object with --json, readable tables otherwise.

Errors become ``{"error": {"code", "message"}}`` and a non-zero exit; a signature that does
not verify is said plainly, because it means the answer cannot be trusted at all.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console

from duet.cli.context import CliContext
from duet.errors import DuetError

console = Console()
err_console = Console(stderr=True)

EXIT_REFUSED = 1
EXIT_UNTRUSTED = 3


class UsageError(DuetError):
    code, status = "usage", 400


def emit(context: CliContext, data: Any, render: Callable[[Console], None]) -> None:
    if context.json:
        sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    else:
        render(console)


@contextmanager
def errors(context: CliContext) -> Iterator[None]:
    """Turn duet errors into the CLI's error output and exit status."""
    try:
        yield
    except DuetError as exc:
        untrusted = exc.code in {
            "bad_answer_signature", "wrong_controller", "answer_not_bound", "stale_answer", "unsigned_answer",
            "bad_identity", "bad_pin", "blob_mismatch",
        }
        if context.json:
            sys.stdout.write(json.dumps({"error": {"code": exc.code, "message": exc.message}}, sort_keys=True) + "\n")
        elif untrusted:
            err_console.print(f"[bold red]UNTRUSTED ANSWER[/]: {exc.message} ({exc.code}). Nothing in it was used.")
        else:
            err_console.print(f"[bold red]error[/] ({exc.code}): {exc.message}")
        raise typer.Exit(EXIT_UNTRUSTED if untrusted else EXIT_REFUSED) from None


def first_contact_notice(context: CliContext, client: Any) -> None:
    if client.first_contact:
        pin = client.pin()
        err_console.print(
            f"[yellow]Pinned controller {pin.controller[:16]}… at {client.url} on first use "
            f"(TEE: {pin.tee}); answers from any other key will be refused.[/]"
        )
        if pin.tee == "none":
            err_console.print("[bold yellow]warning[/]: this controller is not attested (TEE: none).")
