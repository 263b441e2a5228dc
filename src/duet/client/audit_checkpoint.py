"""What a whole-ledger audit keeps between runs, so the next one checks only the new entries.

A checkpoint is written only after an audit in which everything verified and no rule was
broken (a finding must be found again by the next audit, not skipped). It holds:

* the signed head it is for (checked again with the pinned key when read);
* the frontier of that tree (one hash per set bit of its size, ~20 for a million entries),
  computed here from the entries and equal to the signed root: the next audit appends the new
  entries to it and compares the root with the new signed head, with no proof per entry;
* the state the rules need to go on (:class:`~duet.protocol.lifecycle.LifecycleReplay`: per
  CVM its mode, flags, keys, commands running and the owner requests seen; the owner set), and
  each CVM's last entry (so ``cvm_prev`` links are checked across the boundary). So a rule
  broken across the boundary (a command started in a CVM put in service before it) is found;
* a fingerprint of what judged those entries: this auditor's format, the lifecycle rules'
  source and the CVM roots trusted. A checkpoint made under other rules or other roots is not
  used: the audit starts from the first entry again.

It lives in ``<state dir>/audits/<controller id>.json``, beside the last head seen
(``heads/``), and is never more than the user's own record: a damaged or foreign one costs
a full audit, never a wrong verdict (its head and frontier are checked before use).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any

from duet import __version__
from duet.attestation.bundle import CvmRoots
from duet.client import audit_tree
from duet.client.audit_tree import Frontier
from duet.client.audit_witness import Head, verify_any_head
from duet.errors import VerificationError
from duet.keys import PublicKey
from duet.protocol import approvals as ap
from duet.protocol import lifecycle as lc
from duet.protocol.canonical import is_hex64
from duet.protocol.rules import RulesReplay

FORMAT = "duet-audit-checkpoint/2"
_CLASSES: dict[str, type[Any]] = {
    "CvmFacts": lc.CvmFacts,
    "JobFacts": lc.JobFacts,
    "Proposal": ap.Proposal,
    "CvmMode": ap.CvmMode,
    "ApprovalPolicy": ap.ApprovalPolicy,
}
_SKIPPED = ("violations", "initial_owners", "initial_policy", "verify_signature")
"""Replay fields not kept: the violations found (reported already), what was in force before the
ledger said (a whole-ledger audit takes it from the ledger) and the signature check (the auditor's
own, given again)."""
_PARTS: dict[str, type[Any]] = {"lifecycle": lc.LifecycleReplay, "proposals": ap.ProposalReplay}


class CheckpointUnusable(ValueError):
    """Why a stored checkpoint is not used (the audit then starts from the first entry)."""


# --- the replay's state as JSON ----------------------------------------------------------------


def _encode(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, list):
        return [_encode(item) for item in value]
    if isinstance(value, frozenset):
        return {"$frozenset": [_encode(item) for item in value]}
    if isinstance(value, set):
        return {"$set": [_encode(item) for item in value]}
    if isinstance(value, tuple):
        return {"$tuple": [_encode(item) for item in value]}
    if isinstance(value, dict):
        return {"$dict": [[_encode(key), _encode(item)] for key, item in value.items()]}
    name = type(value).__name__
    if dataclasses.is_dataclass(value) and _CLASSES.get(name) is type(value):
        return {"$object": name, "fields": {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}}
    raise TypeError(f"the lifecycle replay holds a {name}, which a checkpoint cannot keep")


def _decode(value: Any) -> Any:
    if isinstance(value, list):
        return [_decode(item) for item in value]
    if not isinstance(value, dict):
        return value
    if "$set" in value:
        return {_decode(item) for item in value["$set"]}
    if "$frozenset" in value:
        return frozenset(_decode(item) for item in value["$frozenset"])
    if "$tuple" in value:
        return tuple(_decode(item) for item in value["$tuple"])
    if "$dict" in value:
        return {_decode(key): _decode(item) for key, item in value["$dict"]}
    if "$object" in value:
        cls = _CLASSES[value["$object"]]
        return _build(cls, {name: _decode(item) for name, item in value["fields"].items()})
    raise CheckpointUnusable("unknown value in the checkpoint")


def _build(cls: type[Any], values: dict[str, Any]) -> Any:
    fields = dataclasses.fields(cls)
    if {f.name for f in fields} != set(values):
        raise CheckpointUnusable(f"the checkpoint's {cls.__name__} has other fields than this auditor's")
    obj = cls(**{f.name: values[f.name] for f in fields if f.init})
    for f in fields:
        if not f.init:
            setattr(obj, f.name, values[f.name])
    return obj


def encode_replay(replay: RulesReplay) -> dict[str, Any]:
    """The replays' state (everything but the violations already reported) as JSON values."""
    return {
        name: {f.name: _encode(getattr(getattr(replay, name), f.name)) for f in dataclasses.fields(cls) if f.name not in _SKIPPED}
        for name, cls in _PARTS.items()
    }


def decode_replay(data: Any) -> RulesReplay:
    """Replays that go on exactly where the encoded ones stood."""
    if not isinstance(data, dict) or set(data) != set(_PARTS):
        raise CheckpointUnusable("the checkpoint holds no rules state")
    replay = RulesReplay()
    for name, cls in _PARTS.items():
        part, fields = data[name], [f for f in dataclasses.fields(cls) if f.name not in _SKIPPED]
        if not isinstance(part, dict) or {f.name for f in fields} != set(part):
            raise CheckpointUnusable("the checkpoint's rules state has other fields than this auditor's")
        target = getattr(replay, name)
        try:
            for f in fields:
                setattr(target, f.name, _decode(part[f.name]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointUnusable(f"the checkpoint's rules state cannot be read ({exc})") from None
    return replay


# --- what judged the entries -------------------------------------------------------------------


def fingerprint(roots: CvmRoots, *sources: str) -> str:
    """Changes whenever a checkpoint made before might not be what this auditor would conclude
    now: the checkpoint format, duet's version, the source of the lifecycle rules, of this
    module and of ``sources`` (the auditor's files), and the CVM roots trusted for evidence."""
    digest = hashlib.sha256(f"{FORMAT}\n{__version__}\n".encode())
    for source in (str(lc.__file__), str(ap.__file__), str(audit_tree.__file__), __file__, *sources):
        try:
            digest.update(Path(source).read_bytes())
        except OSError:
            digest.update(f"unreadable {Path(source).name}".encode())
    digest.update(b"\nroots:" + _roots_id(roots).encode())
    return digest.hexdigest()


def _roots_id(roots: CvmRoots) -> str:
    from cryptography.hazmat.primitives import serialization

    amd = "default" if roots.amd is None else ",".join(sorted(root.key_sha256 for root in roots.amd))
    intel = (
        "default"
        if roots.intel is None
        else ",".join(
            sorted(
                hashlib.sha256(
                    key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
                ).hexdigest()
                for key in roots.intel
            )
        )
    )
    return f"amd={amd};intel={intel}"


# --- on disk -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Checkpoint:
    """The verified state after the first ``head.tree_size`` entries of one controller's ledger."""

    head: Head
    """The controller's signed head, or (a tiles audit) the checkpoint note it published."""
    frontier: Frontier
    last_by_cvm: dict[str | None, int]
    replay: dict[str, Any]
    """:func:`encode_replay` of the replay after those entries."""
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "head": self.head.to_json(),
            "frontier": self.frontier.to_json(),
            "last_by_cvm": [[cvm, seq] for cvm, seq in self.last_by_cvm.items()],
            "replay": self.replay,
            "fingerprint": self.fingerprint,
        }

    @classmethod
    def from_json(cls, data: Any, *, controller: str, public_key: PublicKey, fingerprint: str) -> Checkpoint:
        """Read back and check: format, fingerprint, the head's signature, the frontier's root."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise CheckpointUnusable("it is not a checkpoint this auditor writes")
        if data.get("fingerprint") != fingerprint:
            raise CheckpointUnusable("it was made by another version of the rules or with other CVM roots")
        try:
            head = verify_any_head(data.get("head"), controller=controller, public_key=public_key)
            frontier = Frontier.from_json(head.tree_size, data.get("frontier"))
            last = {cvm: seq for cvm, seq in data["last_by_cvm"]}
        except (ValueError, KeyError, TypeError, VerificationError) as exc:
            raise CheckpointUnusable(f"it is damaged ({exc})") from None
        if frontier.root() != head.root:
            raise CheckpointUnusable("its frontier does not hash to its head's root")
        if not all((cvm is None or isinstance(cvm, str)) and isinstance(seq, int) for cvm, seq in last.items()):
            raise CheckpointUnusable("its last entries per CVM are damaged")
        return cls(head, frontier, last, data.get("replay") or {}, fingerprint)


class CheckpointStore:
    """``<state dir>/audits/<controller id>.json``: one checkpoint per controller; those of
    audits from its published tiles apart, in ``<controller id>.tiles.json`` (``kind="tiles"``)."""

    def __init__(self, state_dir: Path, *, kind: str = "controller") -> None:
        self.directory = state_dir / "audits"
        self.kind = kind

    def path(self, controller: str) -> Path:
        if not is_hex64(controller):
            raise ValueError("a controller id is 64 lowercase hex characters")
        return self.directory / (f"{controller}.json" if self.kind == "controller" else f"{controller}.{self.kind}.json")

    def read(self, controller: str) -> Any | None:
        """The stored JSON, None when there is none; raises CheckpointUnusable when unreadable."""
        try:
            with self.path(controller).open("rb") as file:
                return json.load(file)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise CheckpointUnusable(f"{self.path(controller)} cannot be read ({exc})") from None

    def save(self, checkpoint: Checkpoint) -> None:
        """Replace the checkpoint whole (written aside, then renamed)."""
        path = self.path(checkpoint.head.controller)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        with tmp.open("w") as file:
            _write_json(file, checkpoint.to_json())
        os.replace(tmp, path)

    def forget(self, controller: str) -> None:
        self.path(controller).unlink(missing_ok=True)


def _write_json(file: IO[str], value: Any) -> None:
    """``json.dump`` in compact form, written piece by piece: a long list (the owner requests a
    CVM accepted) is never held as one string, and each piece is made by the C encoder."""
    if isinstance(value, dict):
        file.write("{")
        for i, (key, item) in enumerate(value.items()):
            file.write(("," if i else "") + json.dumps(key) + ":")
            _write_json(file, item)
        file.write("}")
    elif isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        file.write("[")
        for i, item in enumerate(value):
            if i:
                file.write(",")
            _write_json(file, item)
        file.write("]")
    elif isinstance(value, list):
        file.write("[")
        for i in range(0, len(value), _CHUNK):
            file.write(("," if i else "") + json.dumps(value[i : i + _CHUNK], separators=(",", ":"))[1:-1])
        file.write("]")
    else:
        file.write(json.dumps(value, separators=(",", ":")))


_CHUNK = 4096
