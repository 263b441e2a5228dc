"""The auditor dashboard under attack: each attack must end in the red banner naming it, and what
did not verify must never be marked verified.

* an entry altered in the controller's database (the controller refuses to serve it);
* the whole state directory rolled back while the page is open (the page remembers the head
  it saw, in localStorage);
* a man in the middle (a proxy between the browser and the controller) that spoils a signature,
  serves an entry altered and signed again with the controller's own key (the page's own proof
  check, not the controller's, must catch it), or serves an output that is not the one hashed.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from browser_support import TamperingProxy, Visit, screenshot, serving, wait_failure, wait_verified
from duet import keys
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.controller.identity import SIGNING_KEY_FILE
from duet.protocol.canonical import canonical
from duet.protocol.envelope import sign_answer
from duet.testing.process import ControllerProcess
from support import make_owner, start_cvm

STATE = ("duet.sqlite3", "duet.sqlite3-wal", "duet.sqlite3-shm", "sealed")


@dataclass
class Running:
    controller: ControllerProcess
    client: DuetClient
    controller_id: str

    def page_url(self, base: str | None = None, **query: str) -> str:
        query = {"controller": self.controller_id, **query}
        return f"{base or self.controller.url}/?" + "&".join(f"{name}={value}" for name, value in query.items())


def _running(tmp: Path) -> Iterator[Running]:
    owner = make_owner(tmp)
    process = ControllerProcess(tmp / "state", [owner.pub_path])
    with (
        serving(process),
        DuetClient(process.url, owner_key=owner.key, trust=TrustStore(tmp / "user"), insecure=True) as client,
    ):
        controller_id = httpx.get(process.url + "/v1/attestation", timeout=10).json()["controller"]
        yield Running(process, client, controller_id)


@pytest.fixture
def running(tmp_path: Path) -> Iterator[Running]:
    """A controller of this test's own: the attack damages it."""
    yield from _running(tmp_path)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """A controller for the man-in-the-middle attacks, which leave it as it was."""
    yield from _running(tmp_path_factory.mktemp("mitm"))


@pytest.fixture
def proxy(shared: Running) -> Iterator[TamperingProxy]:
    with TamperingProxy(shared.controller.url) as started:
        yield started


# --- the host edits the disk ------------------------------------------------------------------------


def test_an_entry_altered_in_the_database_shows_altered_entry(running: Running, visit: Visit) -> None:
    cvm_id = start_cvm(running.client)
    result = running.client.run(cvm_id, ["echo secret-step"])["results"][0]
    page = visit.page(running.page_url(cvm=cvm_id))
    wait_verified(page)

    seq = result["seq"] - 1  # its command.started entry
    with sqlite3.connect(running.controller.state_dir / "duet.sqlite3", isolation_level=None) as db:
        entry = json.loads(db.execute("SELECT entry FROM ledger WHERE seq = ?", (seq,)).fetchone()[0])
        db.execute("UPDATE ledger SET entry = ? WHERE seq = ?", (canonical({**entry, "command": "echo harmless"}), seq))
    page.reload()

    banner = wait_failure(page, "entry_altered")
    assert "ALTERED ENTRY" in banner and f"entry {seq}" in banner
    assert page.locator("#entries li[data-state='verified']").count() == 0
    assert "echo harmless" not in page.inner_text("body")
    screenshot(page, "dashboard-altered-entry", full_page=False)


def test_a_rolled_back_state_shows_rollback_while_the_page_is_open(running: Running, visit: Visit, tmp_path: Path) -> None:
    controller = running.controller
    cvm_id = start_cvm(running.client)
    running.client.run(cvm_id, ["echo one"])
    backup = tmp_path / "backup"
    copy_state(controller, controller.state_dir, backup)
    running.client.run(cvm_id, ["echo two"])
    running.client.mark(cvm_id, "in-service")
    page = visit.page(running.page_url(cvm=cvm_id))
    wait_verified(page)
    seen = running.client.head()["tree_size"]

    copy_state(controller, backup, controller.state_dir)  # the host rolls all state back; the controller restarts
    assert running.client.head()["tree_size"] < seen

    banner = wait_failure(page, "rollback", timeout=30_000)  # the event stream reconnects: the page looks again
    assert "ROLLBACK" in banner and f"a head of {seen}" in banner
    assert page.locator("#entries li[data-event='mode.changed'][data-state='verified']").count() == 1  # proven before, kept
    screenshot(page, "dashboard-rollback", full_page=False)
    page.reload()  # the head seen is kept in this browser: a fresh load says it again
    wait_failure(page, "rollback")


def copy_state(controller: ControllerProcess, source: Path, target: Path) -> None:
    controller.stop()
    target.mkdir(exist_ok=True)
    for name in STATE:
        there = target / name
        if there.is_dir():
            shutil.rmtree(there)
        else:
            there.unlink(missing_ok=True)
        if (source / name).is_dir():
            shutil.copytree(source / name, there)
        elif (source / name).exists():
            shutil.copy2(source / name, there)
    controller.start()


# --- a man in the middle ----------------------------------------------------------------------------


def signed_again(answer: dict[str, Any], signing_key: keys.PrivateKey) -> bytes:
    """The answer with its altered result, signed anew with the controller's own key (what a host
    that had the key would serve): it verifies, so only the page's proofs can catch the change."""
    return sign_answer(
        canonical(answer["result"]),
        controller=answer["controller"],
        signing_key=signing_key,
        nonce=answer.get("nonce"),
        request_target=answer.get("request_target"),
    )


def test_a_head_with_a_bad_signature_shows_bad_signature(shared: Running, proxy: TamperingProxy, visit: Visit) -> None:
    cvm_id = start_cvm(shared.client)
    page = visit.page(shared.page_url(proxy.url, cvm=cvm_id))
    wait_verified(page)
    shown = page.locator("#entries li").count()

    def spoil_head(path: str, body: bytes) -> bytes:
        if not path.startswith("/v1/ledger/head"):
            return body
        answer = json.loads(body)
        signature = bytearray(answer["signature"].encode())
        signature[5] = ord("A") if signature[5] != ord("A") else ord("B")
        return json.dumps({**answer, "signature": signature.decode()}).encode()

    proxy.tamper = spoil_head
    shared.client.run(cvm_id, ["echo after the spoiled head"])  # the live event makes the page fetch a new head

    banner = wait_failure(page, "bad_signature")
    assert "BAD SIGNATURE" in banner and "does not verify with the pinned controller key" in banner
    assert proxy.tampered >= 1
    assert page.locator("#entries li").count() == shown, "entries were shown on a head that did not verify"
    assert page.locator("#status").get_attribute("class") == "status failed"
    screenshot(page, "dashboard-bad-signature", full_page=False)


@pytest.mark.parametrize("commands", [1, 20], ids=["sparse-proofs", "dense-stream"])
def test_an_entry_altered_and_signed_again_shows_altered_entry(
    shared: Running, proxy: TamperingProxy, visit: Visit, commands: int
) -> None:
    """The answer verifies (signed again with the controller's key, as a compromised host holding
    it could): only the page's own proof of the entry in the signed tree catches the change. A
    CVM of a few entries is proven entry by entry; one of many (dense in the ledger) by streaming
    the ledger's range onto a frontier, whose root fails, and then entry by entry to name it."""
    cvm_id = start_cvm(shared.client)
    seq = shared.client.run(cvm_id, ["echo secret-step", *(["true"] * (commands - 1))])["results"][0]["seq"] - 1
    if commands > 1:  # honest first: the dense CVM is proven with a few pages, not a proof per entry
        page = visit.page(shared.page_url(proxy.url, cvm=cvm_id))
        wait_verified(page)
        entries = page.locator("#entries li[data-state='verified']").count()
        assert entries == 2 * commands + 4 and page.evaluate("window.duetDashboard.requests") < 15
        page.close()
    signing_key = keys.load_private_key(shared.controller.state_dir / "sealed" / SIGNING_KEY_FILE)

    def alter_entry(path: str, body: bytes) -> bytes:
        if not path.startswith("/v1/ledger/entries"):
            return body
        answer = json.loads(body)
        for entry in answer["result"].get("entries", []):
            if entry.get("seq") == seq:
                entry["command"] = "echo harmless"
        return signed_again(answer, signing_key)

    proxy.tamper = alter_entry
    page = visit.page(shared.page_url(proxy.url, cvm=cvm_id))

    banner = wait_failure(page, "entry_altered")
    assert "ALTERED ENTRY" in banner and f"entry {seq}" in banner
    assert page.get_attribute(f"#seq-{seq}", "data-state") == "failed"
    others = page.locator(f"#entries li:not(#seq-{seq})")
    assert others.count() >= 5 and page.locator(f"#entries li[data-state='verified']:not(#seq-{seq})").count() == others.count()


def test_an_output_that_does_not_match_its_hash_is_named(shared: Running, proxy: TamperingProxy, visit: Visit) -> None:
    cvm_id = start_cvm(shared.client)
    digest = shared.client.run(cvm_id, ["echo the real output"])["results"][0]["stdout_sha256"]
    proxy.tamper = lambda path, body: b"a forged output\n" if path.startswith(f"/v1/blobs/{digest}") else body
    page = visit.page(shared.page_url(proxy.url, cvm=cvm_id))
    page.wait_for_selector("#entries li[data-event='command.finished'][data-state='verified']")  # the entry itself is fine

    stdout = page.locator(f"details[data-sha256='{digest}']")  # read (and hashed) once in view
    banner = wait_failure(page, "output_altered")
    assert "OUTPUT DOES NOT MATCH ITS HASH" in banner and digest[:16] in banner
    assert stdout.locator("[data-mark='failed']").count() == 1 and stdout.locator("[data-mark='verified']").count() == 0
    screenshot(page, "dashboard-output-altered", full_page=False)


@pytest.mark.parametrize("hidden", ["first", "last"])
def test_a_controller_entry_hidden_from_its_view_shows_missing_entry(
    shared: Running, proxy: TamperingProxy, visit: Visit, hidden: str
) -> None:
    """The controller's own entries (about no CVM) are few in the ledger: the page reads their view
    (`cvm=controller`) and proves each by an inclusion proof instead of streaming the whole ledger.
    A proxy drops one from that view and signs the page again with the controller's own key: the
    first start is caught by the link the next entry carries to it (`cvm_prev`); the last one,
    which no entry links to yet, because it is the policy the verified identity names (`policy_seq`)."""
    own = shared.client.entries(cvm="controller")
    assert [e["event"] for e in own[:3]] == ["controller.started", "controller.owners", "controller.policy"]
    assert own[-1]["event"] == "controller.policy" and own[-1]["cvm_prev"] is not None
    if hidden == "first":  # honest first: the view is read and proven entry by entry
        start_cvm(shared.client)  # CVM entries after the controller's own: the ledger is more than these
        page = visit.page(shared.page_url(proxy.url))
        wait_verified(page)
        before = len(visit.requests)
        page.locator("#cvm-list [data-cvm=''] button").click()
        page.wait_for_selector("#entries li[data-event='controller.owners'][data-state='verified']")
        wait_verified(page)
        shown = page.locator("#entries li").count()
        assert shown == len(own) and page.locator("#entries li[data-state='verified']").count() == shown
        asked = visit.requests[before:]
        reads = [url for url in asked if "/v1/ledger/entries" in url]
        assert reads and all("cvm=controller" in url for url in reads), reads  # the view, not the whole ledger
        assert sum("/v1/ledger/proof/inclusion" in url for url in asked) == shown
        page.close()

    signing_key = keys.load_private_key(shared.controller.state_dir / "sealed" / SIGNING_KEY_FILE)
    seq = own[0]["seq"] if hidden == "first" else own[-1]["seq"]

    def hide_one(path: str, body: bytes) -> bytes:
        if not (path.startswith("/v1/ledger/entries") and "cvm=controller" in path):
            return body
        answer = json.loads(body)
        answer["result"]["entries"] = [entry for entry in answer["result"]["entries"] if entry["seq"] != seq]
        return signed_again(answer, signing_key)

    proxy.tamper = hide_one
    page = visit.page(shared.page_url(proxy.url))
    page.locator("#cvm-list [data-cvm=''] button").click()

    banner = wait_failure(page, "entry_missing")
    assert "MISSING ENTRY" in banner and proxy.tampered >= 1
    assert page.locator(f"#seq-{seq}").count() == 0
    if hidden == "first":
        assert f"entry {own[1]['seq']} follows entry {seq} about no CVM" in banner, banner
        assert page.get_attribute(f"#seq-{own[1]['seq']}", "data-state") == "failed"
        screenshot(page, "dashboard-controller-entry-hidden", full_page=False)
    else:
        assert f"entry {seq} (controller.policy) put the approval policy in force" in banner, banner
