"""Approvals (M of N) seen live in the auditor dashboard: a real controller started with an
approval policy that asks both of its two owners to reopen a CVM in service. With the page open
on the CVM, owner A proposes, owner B approves, the controller executes: each entry appears as it
is recorded, verified, and says who proposed, who approved, how many of how many, and what ran.
A rejected proposal says who closed it and why. One controller serves the module.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from browser_support import Visit, screenshot, serving, wait_verified
from duet.client.sdk import DuetClient
from duet.client.trust import TrustStore
from duet.protocol import lifecycle as lc
from duet.testing.process import ControllerProcess
from support import Owner, make_owner, start_cvm

POLICY = """
proposal_ttl_s = 3600
[thresholds]
"cvm.mark.in-update" = 2
"""


@dataclass
class Governed:
    controller: ControllerProcess
    owners: tuple[Owner, Owner]
    a: DuetClient
    b: DuetClient
    controller_id: str

    def page_url(self, **query: str) -> str:
        return f"{self.controller.url}/?" + "&".join(
            f"{name}={value}" for name, value in {"controller": self.controller_id, **query}.items()
        )


@pytest.fixture(scope="module")
def governed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Governed]:
    tmp = tmp_path_factory.mktemp("approvals")
    owners = (make_owner(tmp, "a"), make_owner(tmp, "b"))
    policy = tmp / "approvals.toml"
    policy.write_text(POLICY)
    process = ControllerProcess(tmp / "state", [o.pub_path for o in owners], extra_args=("--approval-policy", str(policy)))
    with (
        serving(process),
        DuetClient(process.url, owner_key=owners[0].key, trust=TrustStore(tmp / "user-a"), insecure=True) as a,
        DuetClient(process.url, owner_key=owners[1].key, trust=TrustStore(tmp / "user-b"), insecure=True) as b,
    ):
        controller_id = httpx.get(process.url + "/v1/attestation", timeout=10).json()["controller"]
        yield Governed(process, owners, a, b, controller_id)


def in_service_cvm(client: DuetClient) -> str:
    cvm_id = start_cvm(client)
    assert client.mark(cvm_id, lc.IN_SERVICE)["mode"] == lc.IN_SERVICE  # one owner suffices to close it
    return cvm_id


def test_a_two_of_two_reopening_appears_live_each_step_verified_and_readable(governed: Governed, visit: Visit) -> None:
    a_id, b_id = (owner.key_id for owner in governed.owners)
    cvm_id = in_service_cvm(governed.a)
    page = visit.page(governed.page_url(cvm=cvm_id))
    wait_verified(page)
    page.wait_for_selector("#timeline-header [data-mode='in-service']")

    proposal = governed.a.mark(cvm_id, lc.IN_UPDATE)["proposal"]  # while the page is open
    assert proposal["status"] == "pending"
    created = page.locator(
        f"#entries li[data-event='proposal.created'][data-state='verified']:has([data-full='{proposal['id']}'])"
    )
    created.wait_for()
    text = created.inner_text()
    assert "cvm.mark.in-update" in text and "reopen for updates" in text, text
    assert "1 of 2 approvals (the proposer’s)" in text and "proposed by owner" in text
    assert created.locator(f".id code[data-full='{a_id}']").count() == 1  # the proposer, copyable
    assert page.locator("#entries li[data-event='mode.changed']").count() == 1  # only the mark in-service: nothing ran
    assert page.get_attribute("html", "data-state") == "verified"

    executed = governed.b.approve(proposal["id"])
    assert executed["proposal"]["status"] == "executed"
    page.wait_for_selector("#entries li[data-event='mode.changed'][data-state='verified'] >> nth=1")
    page.wait_for_selector("#timeline-header [data-mode='in-update']")

    approved = page.locator("#entries li[data-event='proposal.approved']")
    assert approved.get_attribute("data-state") == "verified"
    text = approved.inner_text()
    assert "cvm.mark.in-update: approved by owner" in text and "2 of 2 approvals" in text and "threshold met" in text, text
    assert approved.locator(f".id code[data-full='{b_id}']").count() == 1
    assert approved.locator("[data-tally='2/2'].ok").count() == 1

    ran = page.locator("#entries li[data-event='proposal.executed']")
    assert ran.get_attribute("data-state") == "verified"
    text = ran.inner_text()
    assert "cvm.mark.in-update reopen for updates" in text and "2 of 2 approvals by" in text, text
    assert {ran.locator(".id code").nth(i).get_attribute("data-full") for i in range(3)} == {a_id, b_id, proposal["id"]}

    changed = page.locator("#entries li[data-event='mode.changed']").nth(1)
    assert changed.get_attribute("data-state") == "verified"
    text = changed.inner_text()
    assert "in-service →" in text and "in update" in text, text
    assert "as approved in proposal" in text and "(2 of 2 owners)" in text, text
    assert changed.locator(f"[data-proposal='{proposal['id']}']").count() == 1

    # the four entries of the proposal, in the ledger's order, each with the same proposal id to copy
    steps = page.locator(f"#entries li:has([data-full='{proposal['id']}'])")
    assert [steps.nth(i).get_attribute("data-event") for i in range(steps.count())] == [
        "proposal.created",
        "proposal.approved",
        "proposal.executed",
        "mode.changed",
    ]
    assert page.locator("#entries li[data-state='verified']").count() == page.locator("#entries li").count()
    assert page.get_attribute("html", "data-state") == "verified"
    assert visit.outside(governed.controller.url) == []

    first = page.locator("#entries li[data-event='proposal.created']")
    first.scroll_into_view_if_needed()
    screenshot(page, "dashboard-approvals-live")  # docs/images/dashboard-approvals.png is a copy of it


def test_a_rejection_says_who_closed_the_proposal_and_why(governed: Governed, visit: Visit) -> None:
    cvm_id = in_service_cvm(governed.a)
    proposal = governed.a.mark(cvm_id, lc.IN_UPDATE)["proposal"]
    governed.b.reject(proposal["id"], reason="not during the audit window")

    page = visit.page(governed.page_url(cvm=cvm_id))
    wait_verified(page)
    rejected = page.locator("#entries li[data-event='proposal.rejected'][data-state='verified']")
    text = rejected.inner_text()
    assert "cvm.mark.in-update: rejected by owner" in text and "closed, not executed" in text, text
    assert "not during the audit window" in text
    assert page.locator("#entries li[data-event='proposal.executed']").count() == 0
    assert page.locator("#timeline-header [data-mode='in-service']").count() == 1

    page.locator("#cvm-list [data-cvm=''] button").click()  # the policy, among the controller's own entries
    policy = page.locator("#entries li[data-event='controller.policy'][data-state='verified']")
    policy.wait_for()
    assert "cvm.mark.in-update needs 2" in policy.inner_text()
    wait_verified(page)
