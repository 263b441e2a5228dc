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
            "bad_identity", "bad_pin", "blob_mismatch", "controller_key_changed", "tls_pin_mismatch",
            "controller_not_verified", "plain_http",
        }
        if context.json:
            sys.stdout.write(json.dumps({"error": {"code": exc.code, "message": exc.message}}, sort_keys=True) + "\n")
        elif exc.code in ("controller_not_verified", "plain_http"):
            err_console.print(f"[bold red]refused[/] ({exc.code}): {exc.message}")
        elif exc.code in ("controller_key_changed", "tls_pin_mismatch"):
            err_console.print(f"[bold red]REFUSED CONTROLLER[/] ({exc.code}): {exc.message}")
        elif untrusted:
            err_console.print(f"[bold red]UNTRUSTED ANSWER[/]: {exc.message} ({exc.code}). Nothing in it was used.")
        else:
            err_console.print(f"[bold red]error[/] ({exc.code}): {exc.message}")
        raise typer.Exit(EXIT_UNTRUSTED if untrusted else EXIT_REFUSED) from None


def warn(message: str) -> None:
    """A trust warning: always on stderr, so that --json output stays one object on stdout."""
    from rich.markup import escape

    err_console.print(f"[bold yellow]warning[/]: {escape(message)}", highlight=False)


def first_contact_notice(context: CliContext, client: Any) -> None:
    """Kept for callers; trust warnings are now printed when the client is made
    (:meth:`CliContext.client`), on every run, and pinning happens only in ``duet verify``."""
