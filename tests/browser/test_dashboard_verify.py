"""The page's verification (static/verify.js) run in Chromium against what the Python side makes:
the same canonical bytes (RFC 8785), the same RFC 9162 proofs (the public CT vectors the ledger's
own tests use), the same signatures for every key type duet accepts, the same signed answers,
heads, request targets and C2SP checkpoints. A byte of difference anywhere would make the page
call an honest controller a liar (or the reverse), so each check also has a tampered twin.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from browser_support import Visit
from duet import keys
from duet.ledger.checkpoint import Checkpoint, controller_origin, sign_checkpoint
from duet.ledger.heads import sign_head
from duet.protocol.canonical import canonical
from duet.protocol.envelope import canonical_target, request_target, sign_answer

VECTORS = json.loads((Path(__file__).resolve().parents[1] / "assets" / "ct_merkle_vectors.json").read_text())


def run(visit: Visit, site: str, body: str, arg: Any = None) -> Any:
    """``body`` as an async function of ``v`` (verify.js) and ``arg``, in the page's origin."""
    page = visit.context.pages[0] if visit.context.pages else visit.page(f"{site}/dashboard/verify.js")
    return page.evaluate(f"async (arg) => {{ const v = await import('/dashboard/verify.js'); {body} }}", arg)


TRICKY: list[Any] = [
    {"b": 1, "a": [True, False, None], "é": "é", "€": "\u20ac", "😀": "astral", "\ufb01": "ligature"},
    {"numbers": [0, -0.0, 5.0, 0.1, 1e21, 1e-7, 123456789012, -42, 3.14159, 2**53 - 1, 1.5e300]},
    {"text": 'quote " backslash \\ tab \t newline \n nul \u0000 unit \u001f del \u007f sep \u2028 emoji 😀'},
    {"nested": {"z": {"y": [{"x": 1}, []]}, "": {}}},
]


def test_canonical_json_is_byte_for_byte_the_pythons(visit: Visit, site: str) -> None:
    texts = run(visit, site, "return arg.map((json) => v.canonical(JSON.parse(json)));", [json.dumps(v) for v in TRICKY])
    assert [text.encode() for text in texts] == [canonical(value) for value in TRICKY]
    refused = run(
        visit, site, "try { v.canonical(JSON.parse(arg)); return 'accepted'; } catch (e) { return e.code; }", '{"a": "\\ud800"}'
    )
    assert refused == "no_canonical_form"  # a lone surrogate has no canonical form (rfc8785 refuses it too)


def test_merkle_proofs_and_frontiers_match_the_rfc_vectors(visit: Visit, site: str) -> None:
    results = run(
        visit,
        site,
        """
        const h = (x) => v.fromHex(x);
        const leaves = await Promise.all(arg.leaves.map((x) => v.leafHash(h(x))));
        const out = {roots: [], extended: [], inclusion: [], tampered: [], consistency: [], frontier: []};
        const one = new v.Frontier();
        for (const leaf of leaves) { await one.append(leaf); out.roots.push(v.hex(await one.root())); }
        for (let n = 1; n <= leaves.length; n++) {
          const f = new v.Frontier(), k = Math.min(3, n); await f.extend(leaves.slice(0, k)); await f.extend(leaves.slice(k, n));
          out.extended.push(v.hex(await f.root()));
        }
        for (const p of arg.inclusion) {
          const proof = p.proof.map(h), root = h(arg.roots[p.size - 1]);
          out.inclusion.push(await v.verifyInclusion(leaves[p.leaf - 1], p.leaf - 1, p.size, proof, root));
          out.tampered.push(await v.verifyInclusion(leaves[p.leaf % p.size === 0 ? 0 : p.leaf % p.size], p.leaf - 1, p.size, proof, root) && p.size > 1);
        }
        for (const p of arg.consistency) {
          const proof = p.proof.map(h), r1 = h(arg.roots[p.size1 - 1]), r2 = h(arg.roots[p.size2 - 1]);
          out.consistency.push([await v.verifyConsistency(p.size1, p.size2, r1, r2, proof), await v.verifyConsistency(p.size1, p.size2, r2, r1, proof) && p.size1 !== p.size2]);
          const nodes = v.frontierInConsistencyProof(p.size1, p.size2, proof);
          if (nodes) out.frontier.push(v.hex(await new v.Frontier(p.size1, nodes).root()) === arg.roots[p.size1 - 1]);
        }
        return out;
        """,
        {
            "leaves": VECTORS["leaves"],
            "roots": VECTORS["roots"],
            "inclusion": VECTORS["inclusion_proofs"],
            "consistency": VECTORS["consistency_proofs"],
        },
    )
    assert results["roots"] == results["extended"] == VECTORS["roots"]
    assert all(results["inclusion"]) and not any(results["tampered"])
    assert all(ok for ok, _ in results["consistency"]) and not any(swapped for _, swapped in results["consistency"])
    assert results["frontier"] and all(results["frontier"])


@pytest.mark.parametrize("key_type", ["ed25519", "ecdsa", "rsa"])
def test_every_key_type_duet_accepts_verifies_the_same(visit: Visit, site: str, key_type: str) -> None:
    key = keys.generate(key_type)  # type: ignore[arg-type]
    message = canonical({"what": "a tree head", "n": 7})
    checked = run(
        visit,
        site,
        """
        const key = await v.importPublicKey(v.b64decode(arg.spki));
        const message = new TextEncoder().encode(arg.message), signature = v.b64decode(arg.signature);
        const other = new TextEncoder().encode(arg.message + ' ');
        return [key.id, key.type, await v.verifySignature(key, signature, message), await v.verifySignature(key, signature, other)];
        """,
        {
            "spki": base64.b64encode(keys.public_der(key.public_key())).decode(),
            "message": message.decode(),
            "signature": base64.b64encode(keys.sign(key, message)).decode(),
        },
    )
    assert checked == [keys.key_id(key.public_key()), key_type, True, False]


def test_signed_answers_heads_and_targets_verify_as_the_client_does(visit: Visit, site: str) -> None:
    key = keys.generate()
    controller = keys.key_id(key.public_key())
    nonce = "0123456789abcdef0123456789abcdef"
    query = {"cvm": "a b/é*", "start": "0", "nonce": nonce}
    result = {"entries": [{"seq": 0, "command": "echo ü", "duration_ms": 5.415}], "end": 1}
    answer = json.loads(
        sign_answer(
            canonical(result),
            controller=controller,
            signing_key=key,
            nonce=nonce,
            request_target=request_target("GET", "/v1/ledger/entries", query),
        )
    )
    head = sign_head(
        {"tree_size": 3, "root_hash": "ab" * 32, "timestamp": "2026-12-02T07:00:00.000Z", "controller": controller}, key
    )
    checked = run(
        visit,
        site,
        """
        const publicKey = await v.importPublicKey(v.b64decode(arg.spki));
        const pin = {controller: arg.controller, publicKey};
        const target = await v.requestTarget('GET', '/v1/ledger/entries', arg.query);
        const outcome = async (f) => { try { await f(); return 'ok'; } catch (e) { return e.code; } };
        return {
          canonicalTarget: v.canonicalTarget('GET', '/v1/ledger/entries', arg.query),
          answer: await outcome(() => v.verifyAnswer(arg.answer, {...pin, nonce: arg.query.nonce, target})),
          replayed: await outcome(() => v.verifyAnswer(arg.answer, {...pin, nonce: 'ff'.repeat(16), target})),
          redirected: await outcome(() => v.verifyAnswer(arg.answer, {...pin, nonce: arg.query.nonce, target: '00'.repeat(32)})),
          altered: await outcome(() => v.verifyAnswer({...arg.answer, result: {...arg.answer.result, end: 2}}, {...pin, nonce: arg.query.nonce, target})),
          head: await outcome(() => v.verifyHead(arg.head, pin)),
          forged: await outcome(() => v.verifyHead({...arg.head, tree_size: 4}, pin)),
        };
        """,
        {
            "spki": base64.b64encode(keys.public_der(key.public_key())).decode(),
            "controller": controller,
            "query": query,
            "answer": answer,
            "head": head,
        },
    )
    assert checked == {
        "canonicalTarget": canonical_target("GET", "/v1/ledger/entries", query),
        "answer": "ok",
        "replayed": "stale_answer",
        "redirected": "answer_not_bound",
        "altered": "bad_signature",
        "head": "ok",
        "forged": "bad_signature",
    }


def test_a_c2sp_checkpoint_verifies_with_the_pinned_key_only(visit: Visit, site: str) -> None:
    key, other = keys.generate(), keys.generate()
    controller = keys.key_id(key.public_key())
    root = bytes(range(32))
    note = sign_checkpoint(Checkpoint(controller_origin(controller), 1234, root), key).decode()
    forged = sign_checkpoint(Checkpoint(controller_origin(controller), 1234, root), other).decode()
    checked = run(
        visit,
        site,
        """
        const publicKey = await v.importPublicKey(v.b64decode(arg.spki));
        const pin = {controller: arg.controller, publicKey};
        const outcome = async (note) => { try { const c = await v.verifyCheckpoint(note, pin); return [c.tree_size, c.root_hash]; } catch (e) { return e.code; } };
        return [await outcome(arg.note), await outcome(arg.forged), await outcome(arg.note.replace('1234', '1235'))];
        """,
        {
            "spki": base64.b64encode(keys.public_der(key.public_key())).decode(),
            "controller": controller,
            "note": note,
            "forged": forged,
        },
    )
    assert checked == [[1234, root.hex()], "bad_signature", "bad_signature"]
