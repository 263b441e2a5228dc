"""Signed tree heads: the controller's portable statement "my ledger of N entries has root R".

A signed head is a self-contained object ``{tree_size, root_hash, timestamp, controller,
signature}``, the signature (base64) over JCS of the other four by the controller's signing
key. Unlike an answer envelope it needs no request to make sense, so an auditor can keep it
and show it to anyone: two valid signed heads of one controller with the same size and
different roots are, on their own, a proof that the controller (or its disk) forked history.

Depends only on keys and canonical JSON, so clients verify heads without the server code.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from duet import keys
from duet.errors import VerificationError
from duet.protocol.canonical import canonical, is_hex64
from duet.protocol.envelope import b64decode, b64encode

HEAD_FIELDS = ("tree_size", "root_hash", "timestamp", "controller")


@dataclass(frozen=True)
class SignedHead:
    tree_size: int
    root_hash: str
    timestamp: str
    controller: str
    signature: str

    @property
    def root(self) -> bytes:
        return bytes.fromhex(self.root_hash)

    def unsigned(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in HEAD_FIELDS}

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def short(self) -> str:
        return f"size {self.tree_size}, root {self.root_hash[:16]}…, signed {self.timestamp}"


def sign_head(head: dict[str, Any], signing_key: keys.PrivateKey) -> dict[str, Any]:
    """Add the controller's signature over JCS of the four head fields."""
    unsigned = {name: head[name] for name in HEAD_FIELDS}
    return {**unsigned, "signature": b64encode(keys.sign(signing_key, canonical(unsigned)))}


def parse_head(data: Any) -> SignedHead:
    """Shape checks only; ``verify_head`` checks the signature."""
    if not isinstance(data, dict) or set(data) != {*HEAD_FIELDS, "signature"}:
        raise VerificationError(
            "the tree head is not a signed head {tree_size, root_hash, timestamp, controller, signature}", code="bad_head"
        )
    size, root = data["tree_size"], data["root_hash"]
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise VerificationError(f"the tree head's tree_size {size!r} is not a size", code="bad_head")
    if not is_hex64(root):
        raise VerificationError("the tree head's root_hash is not 64 lowercase hex characters", code="bad_head")
    if not all(isinstance(data[name], str) for name in ("timestamp", "controller", "signature")):
        raise VerificationError("the tree head's timestamp, controller and signature must be strings", code="bad_head")
    return SignedHead(size, root, data["timestamp"], data["controller"], data["signature"])


def verify_head(data: Any, *, controller: str, public_key: keys.PublicKey) -> SignedHead:
    """Return the head if it is signed by ``controller``'s key; raise VerificationError otherwise."""
    head = parse_head(data)
    if head.controller != controller:
        raise VerificationError(
            f"the tree head names controller {head.controller[:16]}…, not the pinned {controller[:16]}…",
            code="bad_head_signature",
        )
    try:
        signature = b64decode(head.signature)
    except ValueError:
        raise VerificationError("the tree head's signature is not base64", code="bad_head_signature") from None
    try:
        signed = canonical(head.unsigned())
    except ValueError:  # no RFC 8785 form (an integer beyond 2**53, a lone surrogate): not a head we signed
        raise VerificationError(
            "the tree head has no canonical form; it was not signed by a controller", code="bad_head"
        ) from None
    if not keys.verify(public_key, signature, signed):
        raise VerificationError("the tree head's signature does not verify with the controller's key", code="bad_head_signature")
    return head
