"""How the CLI speaks: one JSON object with --json, readable tables otherwise.

Errors become ``{"error": {"code", "message"}}`` and a non-zero exit; a signature that does
not verify is said plainly, because it means the answer cannot be trusted at all. What counts
as untrusted (exit 3) is decided by the error's type (:class:`duet.errors.TrustError`), which
the SDK raises; the code only names what failed.

This module depends on no other CLI module: commands hand it anything with a ``json`` flag
(:class:`~duet.cli.context.CliContext`).

rich is imported on first use only (``output.console``, ``output.err_console``): the read
commands people and scripts run most (`cvm state`, `cvm list`, any `--json` call) print
plain text and never pay for it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

import typer

from duet.errors import ControllerChanged, DuetError, NotVerified, TrustError

if TYPE_CHECKING:
    from rich.console import Console

_consoles: dict[str, Console] = {}


def _console(name: str) -> Console:
    if name not in _consoles:
        from rich.console import Console

        _consoles[name] = Console(stderr=name == "err_console")
    return _consoles[name]


def __getattr__(name: str) -> Console:
    """``output.console`` and ``output.err_console``, made when first used."""
    if name in ("console", "err_console"):
        return _console(name)
    raise AttributeError(name)


EXIT_REFUSED = 1
EXIT_UNTRUSTED = 3


class OutputMode(Protocol):
    """How to print: one JSON object (``--json``) or text for people."""

    json: bool


class UsageError(DuetError):
    code = "usage"


def emit(context: OutputMode, data: Any, render: Callable[[Console], None]) -> None:
    if context.json:
        sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
    else:
        render(_console("console"))


def emit_plain(context: OutputMode, data: Any, text: Callable[[], str]) -> None:
    """Like :func:`emit`, for output that needs no colour: printed without loading rich."""
    sys.stdout.write(json.dumps(data, sort_keys=True) + "\n" if context.json else text())


def plain_table(headers: list[str], rows: list[list[str]]) -> str:
    """Columns aligned with spaces, a rule under the headers; cells must be single lines."""
    widths = [max([len(header), *(len(row[index]) for row in rows)]) for index, header in enumerate(headers)]
    lines = [headers, ["-" * width for width in widths], *rows]
    return "".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip() + "\n" for line in lines)


@contextmanager
def errors(context: OutputMode) -> Iterator[None]:
    """Turn duet errors into the CLI's error output and exit status: 3 for a trust failure
    (:class:`~duet.errors.TrustError`: an unverified or changed controller, an answer that does
    not verify), 1 for anything else."""
    try:
        yield
    except DuetError as exc:
        untrusted = isinstance(exc, TrustError)
        if context.json:
            sys.stdout.write(json.dumps({"error": {"code": exc.code, "message": exc.message}}, sort_keys=True) + "\n")
        elif isinstance(exc, NotVerified):
            _console("err_console").print(f"[bold red]refused[/] ({exc.code}): {exc.message}")
        elif isinstance(exc, ControllerChanged):
            _console("err_console").print(f"[bold red]REFUSED CONTROLLER[/] ({exc.code}): {exc.message}")
        elif untrusted:
            _console("err_console").print(f"[bold red]UNTRUSTED ANSWER[/]: {exc.message} ({exc.code}). Nothing in it was used.")
        else:
            _console("err_console").print(f"[bold red]error[/] ({exc.code}): {exc.message}")
        raise typer.Exit(EXIT_UNTRUSTED if untrusted else EXIT_REFUSED) from None


def warn(message: str) -> None:
    """A trust warning: always on stderr, so that --json output stays one object on stdout."""
    sys.stderr.write(f"warning: {message}\n")
