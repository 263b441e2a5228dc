"""The controller's own entries (those about no CVM) as the page's auditor (static/audit.js) proves
them, against ledgers made here and served by a stand-in for the verified API: where they are
sparse, their view (`cvm=controller`) is read and each entry proven by an inclusion proof, each
linked to the one before it; where they are dense, the ledger is streamed onto a frontier and
they are taken from the stream, whatever the view says. The real controller's side is in
test_dashboard_attacks.py (a proxy hiding one of them); these are the cases a real controller
does not reach in a test's time (dozens of restarts or proposals on no CVM).
"""

from __future__ import annotations

from typing import Any

from browser_support import Visit
from duet.ledger.merkle import MerkleTree, leaf_hash
from duet.protocol.canonical import canonical

CVM = "c" * 64

# The stand-in API: the answers a verified ControllerApi.get would return (signatures are
# verify.js's business, tested on their own), each request recorded.
AUDIT = """
const { ControllerLedger } = await import('/dashboard/audit.js');
const { entries, proofs, head, hide, anchors } = arg;
const asked = [];
const api = {
  pin: { controller: 'test' },
  async get(path, query = {}, prepare = null) {
    asked.push(path + (query.cvm ? `?cvm=${query.cvm}` : ''));
    let result;
    if (path === '/v1/ledger/entries') {
      const view = entries.filter((e) => e.seq >= query.start && e.seq < query.end && (
        query.cvm === 'controller' ? e.cvm === null && !hide.includes(e.seq) : query.cvm ? e.cvm === query.cvm : true));
      const page = view.slice(0, 1000);
      const end = page.length === 1000 ? page[999].seq + 1 : query.end;
      result = { entries: page, start: query.start, end, tree_size: head.tree_size };
    } else if (path === '/v1/ledger/proof/inclusion') {
      result = { index: query.index, tree_size: query.tree_size, audit_path: proofs[query.index] };
    } else {
      throw new Error(`unexpected ${path}`);
    }
    if (prepare) prepare(result);
    return result;
  },
};
const ledger = new ControllerLedger(api, { last: () => null, save() {} });
ledger.anchors = anchors;
const timeline = await ledger.timeline(null, head);
return {
  shown: timeline.entries.map((e) => e.seq),
  proven: [...timeline.proven].sort((a, b) => a - b),
  findings: timeline.findings.map((f) => [f.code, f.message]),
  asked,
};
"""


def ledger(size: int, own: set[int]) -> list[dict[str, Any]]:
    """``size`` entries, those at ``own`` about no CVM, the rest about one CVM, each linked to the
    previous one of its kind as the controller links them."""
    entries: list[dict[str, Any]] = []
    last: dict[str | None, int] = {}
    for seq in range(size):
        cvm = None if seq in own else CVM
        event = ("controller.policy" if seq == max(own) else "controller.started") if cvm is None else "command.started"
        entries.append({"seq": seq, "cvm": cvm, "cvm_prev": last.get(cvm), "event": event, "actor": "controller"})
        last[cvm] = seq
    return entries


def audit(
    visit: Visit,
    site: str,
    entries: list[dict[str, Any]],
    *,
    hide: tuple[int, ...] = (),
    anchors: Any = (),
    served: list[dict[str, Any]] | None = None,
) -> Any:
    """The controller's own timeline of a ledger of ``entries`` (its signed head), as the page
    proves it from what the API serves (``served``: other entries than those hashed; ``hide``:
    seqs left out of the controller's view)."""
    tree = MerkleTree(leaf_hash(canonical(entry)) for entry in entries)
    size = tree.size
    arg = {
        "entries": served or entries,
        "proofs": [[node.hex() for node in tree.inclusion_proof(i, size)] for i in range(size)],
        "head": {"tree_size": size, "root_hash": tree.root().hex()},
        "hide": list(hide),
        "anchors": list(anchors),
    }
    page = visit.context.pages[0] if visit.context.pages else visit.page(f"{site}/dashboard/verify.js")
    return page.evaluate(f"async (arg) => {{ {AUDIT} }}", arg)


SPARSE = {0, 1, 2, 40, 90}
DENSE = set(range(0, 120, 2))  # 60 of 120: proving each would cost more than streaming the ledger


def test_sparse_controller_entries_are_read_from_their_view_and_each_proven(visit: Visit, site: str) -> None:
    result = audit(visit, site, ledger(120, SPARSE))
    assert result["findings"] == []
    assert result["shown"] == result["proven"] == sorted(SPARSE)
    assert result["asked"].count("/v1/ledger/proof/inclusion") == len(SPARSE)
    assert [a for a in result["asked"] if a.startswith("/v1/ledger/entries")] == ["/v1/ledger/entries?cvm=controller"]


def test_a_controller_entry_hidden_from_a_sparse_view_is_missing(visit: Visit, site: str) -> None:
    result = audit(visit, site, ledger(120, SPARSE), hide=(40,))
    assert [code for code, _ in result["findings"]] == ["entry_missing"]
    assert "entry 90 follows entry 40 about no CVM" in result["findings"][0][1]
    assert 40 not in result["shown"]


def test_the_last_controller_entry_hidden_is_missing_when_the_identity_names_it(visit: Visit, site: str) -> None:
    anchors = [{"seq": 90, "event": "controller.policy", "what": "the approval policy"}]
    result = audit(visit, site, ledger(120, SPARSE), hide=(90,), anchors=anchors)
    assert [code for code, _ in result["findings"]] == ["entry_missing"]
    assert "entry 90 (controller.policy) put the approval policy in force" in result["findings"][0][1]
    honest = audit(visit, site, ledger(120, SPARSE), anchors=anchors)
    assert honest["findings"] == [] and honest["proven"] == sorted(SPARSE)


def test_dense_controller_entries_are_streamed_and_the_view_is_not_believed(visit: Visit, site: str) -> None:
    result = audit(visit, site, ledger(120, DENSE), hide=(40,))  # the stream holds them all
    assert result["findings"] == []
    assert result["shown"] == result["proven"] == sorted(DENSE)
    assert "/v1/ledger/proof/inclusion" not in result["asked"]
    assert "/v1/ledger/entries" in result["asked"]  # the ledger itself, unfiltered


def test_an_altered_entry_in_a_dense_stream_is_named_by_its_proof(visit: Visit, site: str) -> None:
    entries = ledger(120, DENSE)
    served = [dict(entry) for entry in entries]
    served[40]["actor"] = "someone else"
    result = audit(visit, site, entries, served=served)  # the stream fails: each entry is proven, to name it
    assert [(code, "entry 40" in message) for code, message in result["findings"]] == [("entry_altered", True)]
    assert 40 not in result["proven"] and len(result["proven"]) == len(DENSE) - 1
