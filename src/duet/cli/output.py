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

Every string that came from an owner, a CVM or a controller's answer is printed through
:func:`visible` (and :func:`visible_markup` inside rich markup): an owner must not be able to
hide a command from a person reading, or move, clear or retitle their terminal.
"""

from __future__ import annotations

import json
import re
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


_UNSAFE = (
    "\x00-\x08\x0b-\x1f\x7f-\x9f"  # C0 but tab and newline, DEL, C1 (the 8-bit CSI U+009B among them)
    "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # bidi marks, embeddings, overrides, isolates ("Trojan Source")
    "\u180e\u200b-\u200d\u2060-\u2065\u206a-\u206f\ufeff\ufff9-\ufffb\U000e0000-\U000e007f"  # invisible format characters
    "\u2028\u2029"  # line and paragraph separators
    "\ud800-\udfff"  # lone surrogates (JSON can carry them; they would not even encode)
)
_UNSAFE_TEXT = re.compile(f"[{_UNSAFE}]")
_UNSAFE_LINE = re.compile(f"[{_UNSAFE}\t\n]")
_NAMED = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    code = ord(char)
    if char in _NAMED:
        return _NAMED[char]
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def visible(text: object, *, one_line: bool = False) -> str:
    """``text`` (``str(text)`` if it is not a string) with every character a terminal would
    obey or not show made visible as a Python-style escape: ``ESC`` as ``\\x1b``, the 8-bit CSI
    as ``\\x9b``, a right-to-left override as ``\\u202e``. Other text, backslashes included,
    is unchanged, so plain commands and outputs read as they are.

    Escaped: every C0 control but newline and tab, DEL, every C1 control, bidi marks,
    embeddings, overrides and isolates, zero-width and other invisible format characters, line
    and paragraph separators, lone surrogates. Newline and tab are kept (a tab only moves the
    cursor right over blanks: it can hide nothing, and outputs use it), except with
    ``one_line``, for a table cell or a heading, where a newline would forge rows and a tab
    would shift columns: there they are shown as ``\\n`` and ``\\t``.

    Text for rich markup also needs escaping: :func:`visible_markup`.
    """
    string = text if isinstance(text, str) else str(text)
    pattern = _UNSAFE_LINE if one_line else _UNSAFE_TEXT
    return pattern.sub(_escape, string) if pattern.search(string) else string


def visible_markup(text: object, *, one_line: bool = False) -> str:
    """:func:`visible`, then escaped for rich markup (``[bold]`` shown, not obeyed): for
    untrusted text put into a rich markup string. Loads rich: use only where rich prints."""
    from rich.markup import escape

    return escape(visible(text, one_line=one_line))


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
    """Columns aligned with spaces, a rule under the headers; each cell is shown with
    :func:`visible` on one line (an escape cannot hide a cell, a newline cannot forge a row)."""
    shown = [[visible(cell, one_line=True) for cell in row] for row in rows]
    widths = [max([len(header), *(len(row[index]) for row in shown)]) for index, header in enumerate(headers)]
    lines = [headers, ["-" * width for width in widths], *shown]
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
        else:
            code, message = visible_markup(exc.code), visible_markup(exc.message)  # the controller's words, as text
            if isinstance(exc, NotVerified):
                _console("err_console").print(f"[bold red]refused[/] ({code}): {message}")
            elif isinstance(exc, ControllerChanged):
                _console("err_console").print(f"[bold red]REFUSED CONTROLLER[/] ({code}): {message}")
            elif untrusted:
                _console("err_console").print(f"[bold red]UNTRUSTED ANSWER[/]: {message} ({code}). Nothing in it was used.")
            else:
                _console("err_console").print(f"[bold red]error[/] ({code}): {message}")
        raise typer.Exit(EXIT_UNTRUSTED if untrusted else EXIT_REFUSED) from None


def warn(message: str) -> None:
    """A trust warning: always on stderr, so that --json output stays one object on stdout."""
    sys.stderr.write(f"warning: {visible(message)}\n")
