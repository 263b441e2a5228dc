"""What a witness must never forget, kept so that a crash cannot make it forget it.

A witness's one promise is that it never cosigns two checkpoints of a log that are not consistent
with each other. It keeps that promise by remembering, per log, the latest checkpoint it cosigned,
and by having that memory on disk before any cosignature leaves it. This module owns the memory.

The state directory (``--state-dir``, mode 0700) holds:

- ``witness.key``: the witness's Ed25519 private key (PKCS#8 PEM, mode 0600), made at its first
  start. Its cosignatures are cosignature/v1 (c2sp.org/tlog-cosignature) under the witness's name.
- ``state.json``: the witness's name and, per log origin, the latest checkpoint it cosigned
  (size, root hash, and the note: the checkpoint text, the log's signature(s) the witness
  verified and its own cosignature), with a SHA-256 of its content. Replaced atomically: written
  to a temporary file in the same directory, fsynced, renamed over the old one, and the directory
  fsynced, all before the cosignature is answered. After a kill -9 or a power cut, the file is
  the old one or the new one, never a mix; and never older than a cosignature the witness gave.
- ``lock``: an exclusive ``flock`` held by the process that uses the state, so two witness
  processes never share (and diverge on) one state.

At start, anything unexpected is refused with a message naming the file, never repaired by
starting over: a state file that does not parse, whose checksum or structure is wrong, or whose
recorded checkpoints do not carry a valid cosignature of this witness's own key; a key without a
state file (the record of what was cosigned was lost); a state that recorded cosignatures without
a key. A witness that silently restarted from a blank state (or from an older copy of it) could cosign
a fork of what it cosigned since. Starting over on purpose means a new witness: remove both files
(a new key, which the logs' and auditors' policies must then be told about).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import logging
import os
import secrets
import socket
import stat
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from duet import keys
from duet.errors import ConfigError, DuetError
from duet.ledger.checkpoint import (
    Checkpoint,
    CheckpointError,
    CosignatureVerifier,
    parse_checkpoint,
    verify_cosignature,
    witness_vkey,
)
from duet.ledger.merkle import EMPTY_ROOT
from duet.ledger.note import NoteError, NoteVerifier, b64decode, b64encode, is_key_name, parse_note

__all__ = [
    "KEY_FILE",
    "LOCK_FILE",
    "STATE_FILE",
    "STATE_FORMAT",
    "Cosigned",
    "RollbackRefused",
    "StaleState",
    "StateBusy",
    "StateDamaged",
    "StateWriteFailed",
    "WitnessState",
    "WitnessStateError",
    "check_name",
    "configured_logs",
    "default_name",
    "parse_log_option",
    "write_atomically",
]

log = logging.getLogger("duet.witness")

STATE_FORMAT = "duet.witness.state/1"
KEY_FILE = "witness.key"
STATE_FILE = "state.json"
LOCK_FILE = "lock"
_TEMP_SUFFIX = ".tmp"


# --- errors --------------------------------------------------------------------------------------


class WitnessStateError(ConfigError):
    """The witness cannot start with this state directory (``witness_state``,
    ``witness_name_mismatch``)."""

    code = "witness_state"


class StateDamaged(WitnessStateError):
    """The state on disk is not what this witness wrote: it refuses to start rather than
    forget what it cosigned."""

    code = "witness_state_damaged"


class StateBusy(WitnessStateError):
    """Another process holds the state directory's lock."""

    code = "witness_state_busy"


class StateWriteFailed(DuetError):
    """The state could not be written (disk full, I/O error). From then on the witness cosigns
    nothing until it is restarted and has read back what is on disk."""

    code = "witness_state_write_failed"


class StaleState(Exception):
    """``record`` was asked to replace a checkpoint that is no longer the latest: another request
    for the same log got there first. ``current`` is the latest one."""

    def __init__(self, current: Cosigned | None) -> None:
        super().__init__("the witness's latest checkpoint for this log changed meanwhile")
        self.current = current


class RollbackRefused(DuetError):
    """A programming error caught at the last line: a record that would make the witness's
    latest checkpoint smaller, or change the root of the same size."""

    code = "witness_rollback"


# --- the record ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cosigned:
    """The latest checkpoint the witness cosigned for a log, and the note it keeps of it: the
    checkpoint text, the log's signature(s) it verified and its own cosignature (what tlog-witness
    has a witness serve to monitors)."""

    checkpoint: Checkpoint
    note: bytes
    timestamp: int
    """The time of the witness's cosignature in ``note`` (POSIX seconds)."""

    @property
    def origin(self) -> str:
        return self.checkpoint.origin

    @property
    def size(self) -> int:
        return self.checkpoint.size

    @property
    def root(self) -> bytes:
        return self.checkpoint.root


def default_name() -> str:
    """``<this host's fully qualified name>/witness``: a schema-less URL naming the witness, as
    tlog-cosignature recommends. Chosen at the first start only (``--name`` overrides it); later
    starts use the name recorded in ``state.json``, so a renamed host keeps its witness's vkey."""
    for host in (socket.getfqdn(), socket.gethostname()):
        candidate = f"{host.strip().lower()}/witness"
        if host.strip() and is_key_name(candidate):
            return candidate
    return "localhost/witness"


def check_name(name: str) -> str:
    if not is_key_name(name):
        raise WitnessStateError(
            f"{name!r} cannot name a witness: a key name is non-empty, without spaces, '+' or control characters "
            "(e.g. witness.example.com/w1)",
            code="bad_witness_name",
        )
    return name


# --- the logs it witnesses ----------------------------------------------------------------------


def parse_log_option(value: str) -> tuple[str, NoteVerifier]:
    """One ``--log``: ``ORIGIN=VKEY``, or a bare ``VKEY`` whose key name is the origin (as
    tlog-checkpoint recommends logs to name their key). The vkey is the log's Ed25519 note key
    (type 0x01): for a duet controller, what ``/v1/ledger/checkpoint`` is signed with."""
    origin, sep, vkey = value.partition("=")
    if not sep or "+" in origin:  # a bare vkey (its base64 may end in '=')
        origin, vkey = "", value
    try:
        verifier = NoteVerifier.from_vkey(vkey)
    except NoteError as exc:
        raise ConfigError(f"--log {value[:120]!r}: {exc.message}", code="bad_log") from None
    origin = origin or verifier.name
    if any(ord(ch) < 0x20 for ch in origin):
        raise ConfigError(f"--log {value[:120]!r}: an origin is one line without control characters", code="bad_log")
    return origin, verifier


def configured_logs(values: list[str] | tuple[str, ...]) -> dict[str, tuple[NoteVerifier, ...]]:
    """The logs a witness cosigns for: origin → the keys it trusts for it (several ``--log`` of one
    origin: any of the keys, e.g. while a log rotates its key)."""
    logs: dict[str, dict[NoteVerifier, None]] = {}
    for value in values:
        origin, verifier = parse_log_option(value)
        logs.setdefault(origin, {})[verifier] = None
    for origin, verifiers in logs.items():
        slots = {(v.name, v.key_id) for v in verifiers}
        if len(slots) != len(verifiers):
            raise ConfigError(f"two keys given for log {origin!r} share one key name and key id", code="bad_log")
    return {origin: tuple(verifiers) for origin, verifiers in logs.items()}


# --- files ---------------------------------------------------------------------------------------


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that after a crash it holds either the old or the new
    content, and the new content once this returns: a temporary file in the same directory,
    written and fsynced, renamed over ``path``, then the directory fsynced (the rename itself)."""
    directory = path.parent
    temp = directory / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TEMP_SUFFIX}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_leftovers(state_dir: Path) -> None:
    """Temporary files of writes a crash interrupted (they were never renamed: never state)."""
    for entry in state_dir.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(_TEMP_SUFFIX):
            try:
                entry.unlink()
            except OSError:
                pass


def _take_lock(state_dir: Path) -> int:
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = ""
        try:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        except OSError:
            pass
        os.close(fd)
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            raise StateBusy(
                f"another witness process{f' (pid {holder})' if holder.isdigit() else ''} is using {state_dir}: "
                "one state directory serves one witness"
            ) from None
        raise WitnessStateError(f"cannot lock {path}: {exc.strerror}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def _canonical(document: Mapping[str, Any]) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _encode_state(name: str, logs: Mapping[str, Cosigned]) -> bytes:
    document: dict[str, Any] = {
        "format": STATE_FORMAT,
        "name": name,
        "logs": {
            origin: {"size": c.size, "root": b64encode(c.root), "note": c.note.decode("utf-8")} for origin, c in logs.items()
        },
    }
    document["sha256"] = hashlib.sha256(_canonical(document)).hexdigest()
    return (json.dumps(document, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"the key {key!r} appears twice")
        result[key] = value
    return result


def _no_constants(value: str) -> Any:
    raise ValueError(f"{value} is not a JSON number")


@dataclass(frozen=True)
class _Entry:
    origin: str
    size: int
    root: bytes
    note: bytes


def _decode_state(path: Path) -> tuple[str, list[_Entry]]:
    """The name and the recorded entries of ``state.json``, its structure and checksum checked
    (the cosignatures are checked once the key is known)."""

    def damaged(why: str) -> StateDamaged:
        return StateDamaged(
            f"{path} is damaged ({why}). The witness refuses to start rather than forget the checkpoints it "
            f"cosigned. An older copy of the file is no remedy (it could cosign a fork of what came since); to "
            f"start over as a NEW witness, remove both it and {KEY_FILE} (docs/witness.md)"
        )

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise WitnessStateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_constant=_no_constants)
    except (UnicodeDecodeError, ValueError) as exc:
        raise damaged(f"not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise damaged("not a JSON object")
    checksum = document.pop("sha256", None)
    if not isinstance(checksum, str):
        raise damaged("no sha256 field")
    if hashlib.sha256(_canonical(document)).hexdigest() != checksum:
        raise damaged("its content does not match its sha256")
    if document.get("format") != STATE_FORMAT:
        raise damaged(f"format {document.get('format')!r}, not {STATE_FORMAT!r}")
    if set(document) != {"format", "name", "logs"}:
        raise damaged(f"unexpected fields {sorted(set(document) - {'format', 'name', 'logs'})}")
    name, logs = document["name"], document["logs"]
    if not isinstance(name, str) or not is_key_name(name):
        raise damaged("no valid witness name")
    if not isinstance(logs, dict):
        raise damaged("logs is not an object")
    entries = []
    for origin, record in logs.items():
        if not isinstance(record, dict) or set(record) != {"size", "root", "note"}:
            raise damaged(f"the record of {origin!r} is not {{size, root, note}}")
        size, root, note = record["size"], record["root"], record["note"]
        if not isinstance(size, int) or isinstance(size, bool) or not isinstance(root, str) or not isinstance(note, str):
            raise damaged(f"the record of {origin!r} has fields of the wrong types")
        try:
            root_bytes = b64decode(root)
        except ValueError:
            raise damaged(f"the root of {origin!r} is not base64") from None
        entries.append(_Entry(origin, size, root_bytes, note.encode("utf-8")))
    return name, entries


def _verify_entry(path: Path, entry: _Entry, verifier: CosignatureVerifier) -> Cosigned:
    """The record, if its note is a checkpoint of its origin, size and root that this witness's
    own key cosigned: what a damaged or edited file cannot fake without the key."""

    def damaged(why: str) -> StateDamaged:
        return StateDamaged(
            f"{path} is damaged: the record of log {entry.origin!r} {why}. The witness refuses to start rather "
            "than forget the checkpoints it cosigned (docs/witness.md)"
        )

    try:
        note = parse_note(entry.note)
        checkpoint = parse_checkpoint(note.text)
    except NoteError as exc:
        raise damaged(f"is not a checkpoint note ({exc.message})") from None
    if (checkpoint.origin, checkpoint.size, checkpoint.root) != (entry.origin, entry.size, entry.root):
        raise damaged("does not match its checkpoint note")
    if checkpoint.size == 0 and checkpoint.root != EMPTY_ROOT:
        raise damaged("is of an empty tree with a root other than the empty tree's")
    own = [s for s in note.signatures if (s.name, s.key_id) == (verifier.name, verifier.key_id)]
    if not own:
        raise damaged(f"carries no cosignature of this witness's key ({verifier.vkey}): is {KEY_FILE} the key it was made with?")
    try:
        timestamp = max(verify_cosignature(checkpoint, signature, verifier) for signature in own)
    except (CheckpointError, NoteError):
        raise damaged(f"carries a cosignature of this witness that does not verify with {KEY_FILE}") from None
    return Cosigned(checkpoint, entry.note, timestamp)


def _load_key(path: Path) -> ed25519.Ed25519PrivateKey:
    try:
        key = keys.load_private_key(path)
    except ConfigError as exc:
        raise StateDamaged(f"{path} is not the witness's key ({exc.message}); the witness refuses to start") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise StateDamaged(f"{path} is a {type(key).__name__}, not the witness's Ed25519 key; the witness refuses to start")
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("%s is readable by others (mode %o): whoever reads it can cosign as this witness", path, mode & 0o777)
    return key


# --- the state -----------------------------------------------------------------------------------


class WitnessState:
    """The witness's key, name and latest cosigned checkpoint per log, as on disk.

    ``record`` is a compare-and-swap (the latest checkpoint must still be the one the caller
    checked against) followed by the durable write, under one lock: the check of the old size
    and the update are atomic, as tlog-witness requires, even across threads."""

    def __init__(
        self,
        state_dir: Path,
        name: str,
        key: ed25519.Ed25519PrivateKey,
        logs: Mapping[str, Cosigned],
        *,
        lock_fd: int | None,
        read_only: bool = False,
    ) -> None:
        self.state_dir = state_dir
        self.name = name
        self.key = key
        self.verifier = CosignatureVerifier(name, key.public_key())
        self._logs: dict[str, Cosigned] = dict(logs)
        self._lock_fd = lock_fd
        self._mutex = threading.Lock()
        self._broken: str | None = None
        self._read_only = read_only

    @property
    def vkey(self) -> str:
        """The witness's verifier key (type 0x04, cosignature/v1): what logs and auditors trust."""
        return witness_vkey(self.name, self.key.public_key())

    @property
    def path(self) -> Path:
        return self.state_dir / STATE_FILE

    @classmethod
    def open(cls, state_dir: Path, *, name: str | None = None, read_only: bool = False) -> WitnessState:
        """The state in ``state_dir``, made there at the first start (``name``, or
        ``default_name()``). ``name`` given for an existing state must be the recorded one.

        The directory's lock is held until ``close`` (so a second process is refused), unless
        ``read_only`` (``duet witness key``): then it is taken only to make a new state."""
        state_dir = Path(state_dir)
        if name is not None:
            check_name(name)
        try:
            if not state_dir.is_dir():
                state_dir.mkdir(mode=0o700, parents=True)
                _fsync_directory(state_dir.resolve().parent)  # the new directory's own entry
        except OSError as exc:
            raise WitnessStateError(f"cannot create the state directory {state_dir}: {exc.strerror}") from None
        made = (state_dir / STATE_FILE).exists() and (state_dir / KEY_FILE).exists()
        lock_fd = None if read_only and made else _take_lock(state_dir)
        try:
            if lock_fd is not None:
                _remove_leftovers(state_dir)
            state = cls._load(state_dir, name, None if read_only else lock_fd, read_only=read_only)
        except BaseException:
            if lock_fd is not None:
                os.close(lock_fd)
            raise
        if read_only and lock_fd is not None:
            os.close(lock_fd)  # made: a reader needs no lock
        return state

    @classmethod
    def _load(cls, state_dir: Path, name: str | None, lock_fd: int | None, *, read_only: bool) -> WitnessState:
        key_path, state_path = state_dir / KEY_FILE, state_dir / STATE_FILE
        if not state_path.exists():
            if key_path.exists():
                raise StateDamaged(
                    f"{state_dir} has the witness's key ({KEY_FILE}) but no {STATE_FILE}: the record of the checkpoints "
                    "this witness cosigned is lost, and starting from a blank one could cosign a fork of them. To "
                    f"start over as a NEW witness, remove {KEY_FILE} too (docs/witness.md)"
                )
            chosen = check_name(name if name is not None else default_name())
            # The state first, then the key: a crash in between leaves a state that recorded nothing
            # and no key, which the next start completes; never a key without its state.
            write_atomically(state_path, _encode_state(chosen, {}))
            log.info("new witness state in %s (name %s)", state_dir, chosen)
        recorded_name, entries = _decode_state(state_path)
        if name is not None and name != recorded_name:
            raise WitnessStateError(
                f"this witness is named {recorded_name!r} (since its first start, {state_path}); --name {name!r} differs. "
                "Its name is part of its vkey, which logs and auditors trust: omit --name, or pass the recorded one",
                code="witness_name_mismatch",
            )
        if key_path.exists():
            key = _load_key(key_path)
        elif entries:
            raise StateDamaged(
                f"{state_path} records checkpoints this witness cosigned, but its key {key_path} is missing: "
                "restore the key from a backup, or, to start over as a NEW witness, remove both files"
            )
        else:
            key = ed25519.Ed25519PrivateKey.generate()
            write_atomically(key_path, keys.private_pem(key), 0o600)
            log.info("new witness key in %s", key_path)
        verifier = CosignatureVerifier(recorded_name, key.public_key())
        logs = {entry.origin: _verify_entry(state_path, entry, verifier) for entry in entries}
        return cls(state_dir, recorded_name, key, logs, lock_fd=lock_fd, read_only=read_only)

    def latest(self, origin: str) -> Cosigned | None:
        """The latest checkpoint this witness cosigned for ``origin``, if any."""
        with self._mutex:
            return self._logs.get(origin)

    def origins(self) -> tuple[str, ...]:
        with self._mutex:
            return tuple(self._logs)

    def record(self, expected: Cosigned | None, new: Cosigned) -> None:
        """Make ``new`` the latest cosigned checkpoint of its log, durably, if the latest is still
        ``expected`` (else ``StaleState``). Blocking (it fsyncs): call it off the event loop.

        A write that fails leaves the state refusing every later record (``StateWriteFailed``):
        what reached the disk is then unknown, and only a restart, which reads it back, may
        cosign again."""
        origin = new.origin
        with self._mutex:
            if self._read_only:
                raise StateWriteFailed("this witness state was opened read-only")
            if self._broken is not None:
                raise StateWriteFailed(f"the witness state could not be written ({self._broken}); restart the witness")
            current = self._logs.get(origin)
            if current != expected:
                raise StaleState(current)
            if current is not None and (new.size < current.size or (new.size == current.size and new.root != current.root)):
                raise RollbackRefused(
                    f"refused to replace the checkpoint of {origin!r} at size {current.size} with one at size {new.size} "
                    "that is not its extension"
                )
            logs = {**self._logs, origin: new}
            try:
                write_atomically(self.path, _encode_state(self.name, logs))
            except OSError as exc:
                self._broken = f"{self.path}: {exc.strerror or exc}"
                log.error("cannot write the witness state: %s; cosigning stops until a restart", self._broken)
                raise StateWriteFailed(f"cannot write the witness state ({self._broken})") from None
            self._logs = logs

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> WitnessState:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
