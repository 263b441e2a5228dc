"""M-of-N approvals on a real controller with local CVMs (real sshd): issue 14's must-holds.

Three owners A, B, C; the policy asks two of them to reopen a CVM in service (``mark in-update``)
and three to stop one. Every refusal is its own code, signed, and nothing runs: the CVM's mode
and the ledger's operation entries are checked after each.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from duet.client.sdk import ApiError, DuetClient
from duet.client.trust import TrustStore, check_same_identity
from duet.errors import ControllerChanged, DuetError
from duet.protocol import lifecycle as lc
from duet.protocol.envelope import sign_request, verify_answer
from duet.testing.process import ControllerProcess
from support import Owner, duet_cli, make_owner, serving, start_cvm

POLICY = """
proposal_ttl_s = 3600
[thresholds]
"cvm.mark.in-update" = 2
"cvm.stop" = 3
"owners.change" = 2
"""


@pytest.fixture
def owners(tmp_path: Path) -> tuple[Owner, Owner, Owner]:
    return make_owner(tmp_path, "a"), make_owner(tmp_path, "b"), make_owner(tmp_path, "c")


def policy_file(tmp_path: Path, text: str = POLICY) -> Path:
    path = tmp_path / "approvals.toml"
    path.write_text(text)
    return path


@pytest.fixture
def controller(tmp_path: Path, owners: tuple[Owner, Owner, Owner]) -> Iterator[ControllerProcess]:
    process = ControllerProcess(
        tmp_path / "state", [o.pub_path for o in owners], extra_args=("--approval-policy", str(policy_file(tmp_path)))
    )
    with serving(process):
        yield process


def client_of(controller: ControllerProcess, owner: Owner, tmp_path: Path) -> DuetClient:
    return DuetClient(controller.url, owner_key=owner.key, trust=TrustStore(tmp_path / f"user-{owner.path.stem}"), insecure=True)


@pytest.fixture
def clients(controller: ControllerProcess, owners: tuple[Owner, Owner, Owner], tmp_path: Path) -> Iterator[list[DuetClient]]:
    made = [client_of(controller, owner, tmp_path) for owner in owners]
    yield made
    for client in made:
        client.close()


def in_service_cvm(client: DuetClient) -> str:
    cvm_id = start_cvm(client)
    assert client.mark(cvm_id, lc.IN_SERVICE)["mode"] == lc.IN_SERVICE  # one owner suffices to close it
    return cvm_id


def refused(call: Any, code: str, status: int = 409) -> ApiError:
    with pytest.raises(ApiError) as caught:
        call()
    assert (caught.value.code, caught.value.status) == (code, status), caught.value.message
    return caught.value


def events(client: DuetClient, cvm_id: str | None = None) -> list[dict[str, Any]]:
    return client.entries(cvm=cvm_id)


def operation_entries(client: DuetClient, cvm_id: str) -> list[str]:
    """The events that change a CVM (a proposal's votes and outcomes excluded)."""
    return [e["event"] for e in events(client, cvm_id) if e["event"] in (lc.MODE_CHANGED, lc.CVM_STOPPING, lc.COMMAND_STARTED)]


def post_envelope(client: DuetClient, path: str, envelope: dict[str, Any]) -> tuple[int, Any]:
    response = httpx.post(client.url + path, content=json.dumps(envelope).encode(), timeout=30)
    answer = response.json()
    pin = client.pin()
    verify_answer(answer, controller=pin.controller, public_key=pin.public_key())
    return response.status_code, answer["result"]


def test_two_of_three_reopen_a_cvm_in_service(clients: list[DuetClient], owners: tuple[Owner, ...]) -> None:
    a, b, _ = clients
    cvm_id = in_service_cvm(a)
    before = operation_entries(a, cvm_id)

    proposed = a.mark(cvm_id, lc.IN_UPDATE)

    proposal = proposed["proposal"]
    assert proposal["status"] == "pending" and (proposal["approved"], proposal["threshold"]) == (1, 2)
    assert proposed["message"] == f"pending: 1 of 2 approvals; ask another owner to run `duet approve {proposal['id']}`"
    assert a.state(cvm_id)["cvm"]["mode"] == lc.IN_SERVICE
    assert operation_entries(a, cvm_id) == before  # nothing ran
    assert [p["id"] for p in b.proposals(status="pending")] == [proposal["id"]]

    approved = b.approve(proposal["id"])

    assert approved["proposal"]["status"] == "executed"
    assert approved["result"]["mode"] == lc.IN_UPDATE and approved["result"]["changed"] is True
    assert a.state(cvm_id)["cvm"]["mode"] == lc.IN_UPDATE
    tail = [
        e
        for e in events(a, cvm_id)
        if e["seq"] >= min(e2["seq"] for e2 in events(a, cvm_id) if e2["event"] == "proposal.created")
    ]
    assert [(e["event"], e["actor"]) for e in tail] == [
        ("proposal.created", owners[0].key_id),
        ("proposal.approved", owners[1].key_id),
        ("proposal.executed", "controller"),
        ("mode.changed", owners[0].key_id),
    ]
    executed, changed = tail[2], tail[3]
    assert executed["approvers"] == sorted([owners[0].key_id, owners[1].key_id]) and executed["threshold"] == 2
    assert changed["request_digest"] == proposal["id"] and changed["seq"] == executed["seq"] + 1
    assert tail[1]["request"]["params"] == {"proposal_id": proposal["id"]} and tail[1]["signature"]


def test_each_refused_vote_has_its_own_code_and_runs_nothing(
    clients: list[DuetClient], owners: tuple[Owner, ...], tmp_path: Path, controller: ControllerProcess
) -> None:
    a, b, c = clients
    cvm_id = in_service_cvm(a)
    stop = a.stop(cvm_id)["proposal"]  # 1 of 3
    assert b.approve(stop["id"])["proposal"]["approved"] == 2

    # the same owner approving twice (the proposer's signature is its approval)
    refused(lambda: b.approve(stop["id"]), "already_approved")
    refused(lambda: a.approve(stop["id"]), "already_approved")
    # a key outside the owner set: refused at admission, before any proposal is looked at
    stranger = client_of(controller, make_owner(tmp_path, "stranger"), tmp_path)
    refused(lambda: stranger.approve(stop["id"]), "unknown_signer", 401)
    # a replayed approval: C's signed approval, sent twice
    reopen = a.mark(cvm_id, lc.IN_UPDATE)["proposal"]
    envelope = sign_request("proposal.approve", a.pin().controller, {"proposal_id": reopen["id"]}, owners[2].key)
    status, result = post_envelope(c, f"/v1/proposals/{reopen['id']}/approve", envelope)
    assert status == 200 and result["proposal"]["status"] == "executed"
    status, result = post_envelope(c, f"/v1/proposals/{reopen['id']}/approve", envelope)
    assert (status, result["error"]["code"]) == (409, "approval_replayed")
    # the CVM's mode changed since the stop was proposed (in-service then, in-update now)
    refused(lambda: c.approve(stop["id"]), "cvm_mode_changed")
    assert a.proposal(stop["id"])["proposal"]["status"] == "failed"
    # an approval after a withdrawal
    close = a.mark(cvm_id, lc.IN_SERVICE)  # threshold 1: done at once
    assert close["mode"] == lc.IN_SERVICE
    again = a.mark(cvm_id, lc.IN_UPDATE)["proposal"]
    refused(lambda: b.withdraw(again["id"]), "only_proposer_withdraws", 403)
    assert a.withdraw(again["id"])["proposal"]["status"] == "withdrawn"
    refused(lambda: b.approve(again["id"]), "proposal_withdrawn")
    # an unknown proposal
    refused(lambda: b.approve("0" * 64), "unknown_proposal", 404)

    assert a.state(cvm_id)["cvm"]["mode"] == lc.IN_SERVICE
    entries = events(a, cvm_id)
    assert [e["event"] for e in entries].count(lc.CVM_STOPPING) == 0
    assert [e.get("code") for e in entries if e["event"] == "proposal.failed"] == ["cvm_mode_changed"]
    assert [e["event"] for e in entries if e["event"] == lc.MODE_CHANGED].count(lc.MODE_CHANGED) == 3  # close, reopen, close


def race(proposal_id: str, voters: list[DuetClient]) -> list[str]:
    """Every voter approves at the same moment; each one's outcome: the proposal's status, or the refusal's code."""
    outcomes: list[str] = []
    barrier = threading.Barrier(len(voters))

    def vote(client: DuetClient) -> None:
        barrier.wait()
        try:
            outcomes.append(client.approve(proposal_id)["proposal"]["status"])
        except ApiError as exc:
            outcomes.append(exc.code)

    threads = [threading.Thread(target=vote, args=(client,)) for client in voters]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return outcomes


def test_racing_approvals_execute_once(clients: list[DuetClient]) -> None:
    a, b, c = clients
    for _ in range(3):
        cvm_id = in_service_cvm(a)
        proposal = a.mark(cvm_id, lc.IN_UPDATE)["proposal"]

        assert sorted(race(proposal["id"], [b, c])) == ["executed", "proposal_closed"]

        entries = events(a, cvm_id)
        assert [e["event"] for e in entries].count("proposal.executed") == 1
        assert [e["mode"] for e in entries if e["event"] == lc.MODE_CHANGED] == [lc.IN_SERVICE, lc.IN_UPDATE]


def test_pending_proposals_survive_a_restart_and_expire_across_it(tmp_path: Path, owners: tuple[Owner, Owner, Owner]) -> None:
    short = POLICY.replace("proposal_ttl_s = 3600", "proposal_ttl_s = 4")
    process = ControllerProcess(
        tmp_path / "state",
        [o.pub_path for o in owners],
        extra_args=("--approval-policy", str(policy_file(tmp_path, short)), "--proposal-sweep", "1"),
    )
    with serving(process):
        a, b = client_of(process, owners[0], tmp_path), client_of(process, owners[1], tmp_path)
        cvm_id = in_service_cvm(a)
        waiting = a.mark(cvm_id, lc.IN_UPDATE)["proposal"]
        process.kill()  # a crash: nothing is written on the way out
        process.start()

        assert [p["id"] for p in b.proposals(status="pending")] == [waiting["id"]]
        kept = b.proposal(waiting["id"])["proposal"]
        assert (kept["proposer"], kept["approved"], kept["expires_at"]) == (owners[0].key_id, 1, waiting["expires_at"])

        process.restart()
        time.sleep(max(0.0, 4.5 - 1))  # past its expiry, across a second restart
        refused(lambda: b.approve(waiting["id"]), "proposal_expired")
        assert b.state(cvm_id)["cvm"]["mode"] == lc.IN_SERVICE
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            expired = [e for e in events(a, cvm_id) if e["event"] == "proposal.expired"]
            if expired:
                break
            time.sleep(0.2)
        assert len(expired) == 1 and expired[0]["proposal"] == waiting["id"]
        process.restart()  # the ledger with an expired proposal verifies and the controller starts
        assert a.proposal(waiting["id"])["proposal"]["status"] == "expired"
        a.close()
        b.close()


def test_removing_an_owner_needs_its_threshold_and_drops_its_approvals(
    clients: list[DuetClient], owners: tuple[Owner, ...], controller: ControllerProcess, tmp_path: Path
) -> None:
    a, b, c = clients
    cvm_id = in_service_cvm(a)
    reopen = a.mark(cvm_id, lc.IN_UPDATE)["proposal"]  # A's approval: 1 of 2
    pinned = b.check_identity()

    # never a threshold above the number of owners: with cvm.stop = 3, three owners must stay
    refused(lambda: b.change_owners(remove=[owners[0].key_id]), "threshold_above_owners")
    relaxed = b.change_policy({"thresholds": {"cvm.mark.in-update": 2, "cvm.stop": 2, "owners.change": 2}})
    assert relaxed["approval_policy"]["thresholds"]["cvm.stop"] == 2  # policy.change: one owner under this policy
    assert b.proposal(reopen["id"])["proposal"]["status"] == "pending"  # a policy change does not close proposals
    with pytest.raises(ControllerChanged) as policy_changed:
        b.check_identity()  # a client that pinned the old identity is told, with the entry that changed it
    assert policy_changed.value.code == "policy_changed" and f"ledger entry {relaxed['seq']}" in policy_changed.value.message

    removal = b.change_owners(remove=[owners[0].key_id])["proposal"]
    assert removal["status"] == "pending" and owners[0].key_id in b._fetch_identity().owners  # one owner is not enough
    done = c.approve(removal["id"])
    assert done["proposal"]["status"] == "executed" and done["result"]["owners"] == sorted([owners[1].key_id, owners[2].key_id])

    refused(lambda: a.approve(reopen["id"]), "unknown_signer", 401)  # A is no longer an owner
    shown = b.proposal(reopen["id"])["proposal"]
    assert shown["approved"] == 0 and shown["approvals"] == [{"owner": owners[0].key_id, "digest": reopen["id"], "counts": False}]
    assert b.approve(reopen["id"])["proposal"]["status"] == "pending"  # B alone: 1 of 2 now
    assert b.state(cvm_id)["cvm"]["mode"] == lc.IN_SERVICE
    assert c.approve(reopen["id"])["proposal"]["status"] == "executed"
    assert b.state(cvm_id)["cvm"]["mode"] == lc.IN_UPDATE

    # the identity document changed with the owner set, naming the entry that changed it
    owners_entry = [e for e in events(b) if e["event"] == lc.CONTROLLER_OWNERS][-1]
    shown_identity = b._fetch_identity()
    assert shown_identity.owners_seq == owners_entry["seq"] and owners[0].key_id not in shown_identity.owners
    with pytest.raises(ControllerChanged) as changed:
        check_same_identity(pinned, shown_identity, url=controller.url, remedy="re-verify.")
    assert changed.value.code == "owners_changed" and f"Ledger entry {owners_entry['seq']}" in changed.value.message

    # a restart keeps the owner set and policy in force, whether it is given the first start's files again (as a
    # measured Gramine command line always is) or none; other files are refused and recorded
    controller.restart()
    assert sorted(b._fetch_identity().owners) == sorted([owners[1].key_id, owners[2].key_id])
    controller.stop()
    intruder = make_owner(tmp_path, "intruder")
    controller.owner_keys = [owners[1].pub_path, intruder.pub_path]
    with pytest.raises(DuetError, match="exited at start"):
        controller.start(timeout=20)
    assert "owner_keys_changed" in controller.log()
    controller.owner_keys = []
    other_policy = tmp_path / "other.toml"
    other_policy.write_text('[thresholds]\n"cvm.stop" = 1\n')
    controller.extra_args = ("--approval-policy", str(other_policy))
    with pytest.raises(DuetError, match="exited at start"):
        controller.start(timeout=20)
    assert "approval_policy_changed" in controller.log()
    controller.extra_args = ()
    controller.start()
    identity = b._fetch_identity()
    assert sorted(identity.owners) == sorted([owners[1].key_id, owners[2].key_id])
    assert identity.approval_policy is not None and identity.approval_policy["thresholds"]["cvm.stop"] == 2
    refused(lambda: a.mark(cvm_id, lc.IN_SERVICE), "unknown_signer", 401)
    # the removed proposer's reopening ran on the approvals of the owners in force: lawful, as the audit says
    audited = duet_cli(controller, owners[1], tmp_path / "auditor", "--json", "audit", cvm_roots=True)
    assert audited.returncode == 0 and json.loads(audited.stdout.splitlines()[0])["ok"] is True, audited.stdout[-2000:]


def test_the_cli_proposes_approves_and_the_audit_recounts_every_vote(
    clients: list[DuetClient], owners: tuple[Owner, ...], controller: ControllerProcess, tmp_path: Path
) -> None:
    a = clients[0]
    cvm_id = in_service_cvm(a)

    pending = duet_cli(controller, owners[0], tmp_path / "a", "cvm", "mark", cvm_id, "in-update")

    assert pending.returncode == 4, pending.stderr
    proposal_id = a.proposals(status="pending")[0]["id"]
    assert pending.stdout.strip() == f"pending: 1 of 2 approvals; ask another owner to run `duet approve {proposal_id}`"
    listed = duet_cli(controller, owners[1], tmp_path / "b", "proposals", "--pending")
    assert listed.returncode == 0 and proposal_id in listed.stdout and "cvm.mark.in-update" in listed.stdout
    approved = duet_cli(controller, owners[1], tmp_path / "b", "approve", proposal_id)
    assert approved.returncode == 0, approved.stderr
    assert "executed" in approved.stdout and a.state(cvm_id)["cvm"]["mode"] == lc.IN_UPDATE
    again = duet_cli(controller, owners[2], tmp_path / "c", "--json", "approve", proposal_id)
    assert again.returncode == 1 and json.loads(again.stdout)["error"]["code"] == "proposal_closed"

    # a lawful history of proposals, votes and a governed policy change: the whole-ledger and the CVM audit pass
    relaxed = duet_cli(controller, owners[2], tmp_path / "c", "--json", "policy", "show")
    assert json.loads(relaxed.stdout)["approval_policy"]["thresholds"]["cvm.mark.in-update"] == 2
    for target in ((), (cvm_id,)):
        audited = duet_cli(controller, owners[2], tmp_path / f"auditor{len(target)}", "--json", "audit", *target, cvm_roots=True)
        report = json.loads(audited.stdout.splitlines()[0])
        assert audited.returncode == 0 and report["ok"] is True, (report.get("findings"), audited.stderr)
