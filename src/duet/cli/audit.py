"""``duet audit [CVM_ID] [--long] [--follow] [--compare FILE|URL] [--from-start] [--witness VKEY ... [--witness-quorum K]]
[--tiles URL]``: verify the ledger and show a CVM's timeline.

The whole-ledger audit goes on from the checkpoint the last clean audit kept (``--from-start``
checks every entry again); long audits show a progress bar on stderr when it is a terminal.
``--witness`` holds the controller's checkpoint to the user's witness policy each round;
``--tiles`` reads the ledger from its published tiles and sends nothing to the controller.

Exit status: 0 only when everything verified; 3 when anything did not (what failed or broke
a lifecycle rule is said, entry by entry, and each other view that does not agree); 1 when the
controller, or a view to compare with, could not be asked at all. docs/audit.md lists the findings.

Everything the ledger, the controller or another view says (commands, outputs, details, CVM
ids, findings quoting them) is printed through :func:`output.visible_markup`: shown as text,
never obeyed by the terminal or by rich's markup. ``--json`` prints it exactly.
"""

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from duet.cli import output
from duet.cli.context import CliContext

if TYPE_CHECKING:
    from rich.console import Console

    from duet.attestation.bundle import CvmRoots
    from duet.client import ControllerPin, DuetClient


def _cvm_roots(path: "Path | None") -> "CvmRoots | None":
    if path is None:
        return None
    from duet.attestation.bundle import load_cvm_roots
    from duet.errors import ConfigError

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read --cvm-roots {path}: {exc.strerror}", code="roots_unreadable") from None
    return load_cvm_roots(data, str(path))


def audit(
    ctx: typer.Context,
    cvm_id: Annotated[Optional[str], typer.Argument(help="Audit this CVM's history; without it, the whole ledger.")] = None,
    long: Annotated[
        bool, typer.Option("--long", help="Also fetch every output and check it against its recorded SHA-256.")
    ] = False,
    follow: Annotated[
        bool, typer.Option("--follow", help="Keep auditing each new head (live events, else every --interval s).")
    ] = False,
    interval: Annotated[float, typer.Option(help="With --follow: re-audit at least this often, in seconds.")] = 10.0,
    compare: Annotated[
        Optional[list[str]],
        typer.Option(
            "--compare",
            metavar="FILE|URL",
            help="Also check that another view of this controller agrees with this one: another auditor's saved head "
            "(FILE, e.g. their <state dir>/heads/<controller>.json) or another copy's URL. Repeatable; once, at the start.",
        ),
    ] = None,
    cvm_roots: Annotated[
        Optional[Path],
        typer.Option(
            envvar="DUET_CVM_ROOTS",
            help="Also trust these roots for CVM evidence (PEM; e.g. `duet controller sim-root --cvm` for SIMULATED "
            "local CVMs). AMD's and Intel's are always trusted.",
        ),
    ] = None,
    from_start: Annotated[
        bool,
        typer.Option(
            "--from-start",
            help="Check every entry from the first, not only those after the checkpoint the last clean audit of the "
            "whole ledger kept.",
        ),
    ] = False,
    rows: Annotated[
        int,
        typer.Option(
            "--timeline",
            metavar="N",
            min=0,
            help="Show (and keep in memory) at most the last N entries checked; 0: all of them.",
        ),
    ] = 1000,
    witness: Annotated[
        Optional[list[str]],
        typer.Option(
            "--witness",
            metavar="VKEY",
            help="Require the controller's checkpoint to be cosigned by this witness (its cosignature/v1 vkey, what "
            "`duet witness key` prints). Repeatable; see --witness-quorum.",
        ),
    ] = None,
    witness_quorum: Annotated[
        Optional[int],
        typer.Option(
            "--witness-quorum",
            metavar="K",
            min=0,
            help="How many of the --witness witnesses must have cosigned (default: all of them). More than half rules "
            "out a split view.",
        ),
    ] = None,
    tiles: Annotated[
        Optional[str],
        typer.Option(
            "--tiles",
            metavar="URL",
            help="Read the ledger from the controller's published tiles (https://..., azure://..., s3://..., a "
            "directory) instead of the controller, which is not contacted: its key is the one pinned for --url.",
        ),
    ] = None,
) -> None:
    """Verify, trusting no one, that the ledger is complete, unaltered, lawful and never forked or rolled back."""
    from duet.client import Auditor, HeadStore, load_view

    context: CliContext = ctx.obj
    with output.errors(context), _source(context, tiles) as source:
        store = HeadStore(source.trust_dir)
        others = [load_view(spec, source.pin()) for spec in compare or []]
        bar = _Progress(enabled=not context.json and output.err_console.is_terminal)
        auditor = Auditor(
            source.audited,
            store,
            cvm=cvm_id,
            long=long,
            cvm_roots=_cvm_roots(cvm_roots),
            from_start=from_start,
            timeline=rows or None,
            progress=bar,
            witnesses=witness or None,
            witness_quorum=witness_quorum,
            tiles=tiles,
        )
        with closing(auditor):
            with bar:
                result = auditor.audit()
            for other in others:
                auditor.compare(other, result)
            _report(context, result, first=True)
            if not result.ok:
                raise typer.Exit(output.EXIT_UNTRUSTED)
            if not follow:
                return
            waker = _Sleeper() if source.client is None else _EventWaker(source.client, start=auditor.verified_size)
            try:
                while True:
                    waker.wait(interval)
                    with bar:
                        result = auditor.follow()
                    if result.entries or not result.ok or context.json:
                        _report(context, result, first=False)
                    if not result.ok:
                        raise typer.Exit(output.EXIT_UNTRUSTED)
            except KeyboardInterrupt:
                return
            finally:
                waker.stop()


class _Source:
    """What ``duet audit`` audits through: the controller's client, or (``--tiles``) only the
    key pinned for ``--url``, so that nothing is ever sent to the controller."""

    def __init__(self, client: "DuetClient | None", audited: Any, trust_dir: Path) -> None:
        self.client = client
        self.audited = audited
        self.trust_dir = trust_dir

    def pin(self) -> "ControllerPin":
        return self.audited.pin()  # type: ignore[no-any-return]


class _PinnedKey:
    """An ``AuditSource`` that holds the pinned key and answers nothing else: with ``--tiles``
    the auditor asks the controller for nothing, and this makes sure of it."""

    first_contact = False

    def __init__(self, url: str, pin: "ControllerPin") -> None:
        self.url = url
        self._pin = pin

    def pin(self) -> "ControllerPin":
        return self._pin

    def _refuse(self) -> Any:
        raise AssertionError("duet audit --tiles asks the controller for nothing")

    def get(self, path: str, **query: Any) -> Any:
        return self._refuse()

    def blob(self, sha256: str) -> bytes:
        return self._refuse()  # type: ignore[no-any-return]

    def checkpoint(self, *, witnessed: bool = False) -> bytes:
        return self._refuse()  # type: ignore[no-any-return]


@contextmanager
def _source(context: CliContext, tiles: Optional[str]) -> "Iterator[_Source]":
    if tiles is None:
        with context.client() as client:
            client.check_identity()  # the owner set (and keys) it shows now must be the ones the user verified
            yield _Source(client, client, client.trust.path.parent)
        return
    from duet.client import NotVerified, TrustStore

    trust = TrustStore.default()
    pin = trust.get(context.url)
    if pin is None or not pin.verified_at:
        raise NotVerified(
            f"--tiles audits the published log of the controller pinned for {context.url} without contacting it, so its "
            f"key must be pinned: run `duet --url {context.url} verify` first (`duet --insecure --url {context.url} verify` "
            "for a controller without attestation), or give the --url it was pinned for",
            code="not_pinned",
        )
    if not pin.attested:
        output.warn(
            f"the key pinned for {context.url} was pinned WITHOUT attestation (--insecure): the published log is "
            "checked against it, but nothing proves which code holds it."
        )
    elif pin.tee == "simulated-sgx":
        output.warn(f"the controller pinned for {context.url} runs in a SIMULATED SGX TEE: it gives no protection.")
    yield _Source(None, _PinnedKey(context.url, pin), trust.path.parent)


class _Sleeper:
    """``--follow`` with ``--tiles``: a published log announces nothing; look again every --interval s."""

    def wait(self, timeout: float) -> None:
        time.sleep(timeout)

    def stop(self) -> None:
        pass


class _Progress:
    """A progress bar on stderr for a long round (``Auditor(progress=...)``), shown only once a
    round has at least ``MIN_ENTRIES`` entries to check, and removed when it ends."""

    MIN_ENTRIES = 5000

    def __init__(self, *, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total < self.MIN_ENTRIES:
            return
        if self._bar is None:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self._bar = Progress(
                TextColumn("checking ledger entries"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=output.err_console,
                transient=True,
            )
            self._task = self._bar.add_task("audit", total=total)
            self._bar.start()
        self._bar.update(self._task, completed=done, total=total)

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = self._task = None


class _EventWaker:
    """Reads ``/v1/events`` in a thread and wakes the follower on each event.

    Events only say "look again": what is shown comes from the signed head and proofs, so a
    lost or forged event can at worst delay a check until the next ``--interval``.
    """

    def __init__(self, client: "DuetClient", *, start: int) -> None:
        self._client = client
        self._start = start  # entries from here on wake us, even those committed before we connect
        self._event = threading.Event()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="duet-events", daemon=True)
        self._thread.start()

    def wait(self, timeout: float) -> None:
        self._event.wait(timeout)
        self._event.clear()

    def stop(self) -> None:
        self._stopping.set()

    def _run(self) -> None:
        from duet.client import ConnectionFailed

        last_id: str | None = None
        while not self._stopping.is_set():
            try:
                # The SDK's own connection, so TLS and pinning settings apply to the stream too.
                with closing(self._client.event_lines(start=self._start, last_event_id=last_id)) as lines:
                    for line in lines:
                        if self._stopping.is_set():
                            return
                        if line.startswith("id:"):
                            last_id = line[3:].strip()
                            self._event.set()
                        elif line.startswith("event: end"):
                            self._event.set()
            except ConnectionFailed:
                pass
            self._stopping.wait(1.0)


def _report(context: CliContext, result: Any, *, first: bool) -> None:
    data = result.to_json()
    if context.json:
        sys.stdout.write(json.dumps(data, sort_keys=True) + "\n")
        sys.stdout.flush()
        return
    console = output.console
    if first:
        _header(console, result)
    if data["timeline"]:
        _table(console, data["timeline"], cvm_column=result.cvm is None, long=bool(result.outputs))
    _comparisons(console, result)
    _witnesses(console, result)
    for note in result.notes:
        console.print(f"[yellow]note[/]: {_markup(note)}")
    if result.ok:
        head = result.head
        checked, shown = result.checked, len(result.entries)
        new = not first or result.resumed is not None
        proven = "by the published tiles" if result.read_from == "tiles" else "in the signed ledger"
        console.print(
            f"[green]✓ verified[/]: head {_markup(head.short())}; {checked:,} entr{'y' if checked == 1 else 'ies'} "
            f"{'new ' if new else 'shown '}— each proven {proven}"
            + (f" (the last {shown:,} listed; --timeline N for more)" if shown < checked else "")
            + (f", {len(result.outputs)} outputs match their hashes" if result.outputs else "")
        )
    else:
        err = output.err_console
        err.print(f"[bold red]✗ AUDIT FAILED[/] for controller {_markup(result.controller[:16])}… at {_markup(result.url)}:")
        for finding in result.findings:
            err.print(f"  [red]•[/] {_markup(finding)}")
    sys.stdout.flush()


def _markup(text: object) -> str:
    """Untrusted text for a rich markup line: escapes visible, markup shown as text."""
    return output.visible_markup(text, one_line=True)


def _header(console: "Console", result: Any) -> None:
    pin_note = " (pinned now, on first use)" if result.first_contact else ""
    if result.read_from == "tiles":
        console.print(
            f"Controller [bold]{_markup(result.controller)}[/]: its log as published at {_markup(result.url)} "
            "(the controller is not contacted; its key is the one you pinned)"
        )
    else:
        console.print(f"Controller [bold]{_markup(result.controller)}[/] at {_markup(result.url)}{pin_note}")
    if result.cvm:
        console.print(f"CVM [bold]{_markup(result.cvm)}[/]")
    if result.head is None:
        return
    previous = result.previous
    if result.resumed is not None:
        resumed = result.resumed
        when = "read" if result.read_from == "tiles" else "signed"  # a checkpoint note carries no time
        console.print(
            f"Going on from the audit checkpoint of {_markup(f'{resumed.tree_size:,}')} entries verified before "
            f"({when} {_markup(resumed.timestamp)}); --from-start checks every entry again"
        )
    if previous is None:
        console.print(f"Head: {_markup(result.head.short())} — first head seen from this controller; later audits must extend it")
    elif result.ok:
        same = previous.tree_size == result.head.tree_size
        console.print(
            f"Head: {_markup(result.head.short())} — {'same as' if same else 'consistent with'} the head of "
            f"{_markup(previous.tree_size)} entries seen {_markup(previous.timestamp)}"
        )


_RELATIONS = {
    "same": "the same head",
    "prefix": "a prefix of this one (proven by {proven_by})",
    "extension": "an extension of this one (proven by {proven_by})",
}


def _comparisons(console: "Console", result: Any) -> None:
    """Say which other views agree; those that do not are findings, printed with the others."""
    for record in result.comparisons:
        if record["consistent"]:
            relation = _RELATIONS[record["relation"]].format(proven_by=record.get("proven_by") or record["source"])
            head = record["head"]
            when = f"signed {head['timestamp']}" if "timestamp" in head else f"read {head.get('seen')}"
            console.print(
                f"[green]✓ the two views are consistent[/]: {_markup(record['source'])} holds a head of "
                f"{_markup(head['tree_size'])} entries {_markup(when)}, " + _markup(relation)
            )


def _witnesses(console: "Console", result: Any) -> None:
    """Which witnesses cosigned the checkpoint (too few is a finding, printed with the others)."""
    record = result.witnesses
    if not record or not record["ok"]:
        return
    signed = ", ".join(record["signed_by"]) or "none"
    missing = f"; not by {', '.join(record['missing'])}" if record["missing"] else ""
    console.print(
        f"[green]✓ witnessed[/]: the checkpoint of {_markup(record['checkpoint']['tree_size'])} entries is cosigned by "
        f"{_markup(signed)} ({_markup(record['quorum'])} of {_markup(len(record['witnesses']))} required){_markup(missing)}"
    )


def _table(console: "Console", rows: list[dict[str, Any]], *, cvm_column: bool, long: bool) -> None:
    """One row per entry; every cell from the ledger is made visible on one line, outputs (``long``)
    keep their newlines and tabs."""
    from rich.table import Table

    columns = ["seq", "time", *(["CVM"] if cvm_column else []), "event", "mode", "command", "exit", "detail", "ok"]
    if long:
        columns.append("stdout")
    table = Table(*columns, show_lines=long)
    for row in rows:
        cells = [_markup(row["seq"]), _markup(str(row["time"] or "")[:23])]
        if cvm_column:
            cells.append(_markup(str(row["cvm"] or "")[:12]))
        cells += [
            _markup(row["event"]) + (" [yellow](seed protocol)[/]" if row.get("protocol") == "seed" else ""),
            _markup(row["mode"] or ""),
            _markup(row["command"] or ""),
            "" if row["exit_status"] is None else _markup(row["exit_status"]),
            _markup(row["detail"]),
            ("[green]✓[/]" if row["verified"] else "[bold red]✗[/]")
            + (f" [bold red]⚠ FORBIDDEN: {_markup(row['violation'])}[/]" if row.get("violation") else ""),
        ]
        if long:
            cells.append(output.visible_markup(row.get("stdout", "")))
        table.add_row(*cells)
    console.print(table)
