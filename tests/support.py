"""Helpers shared by tests (importable as ``support``; tests/ is on sys.path via conftest)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from duet import keys
from duet.client.sdk import DuetClient
from duet.testing.process import ControllerProcess, remove_all

if TYPE_CHECKING:
    from duet.ledger.log import Ledger


@dataclass(frozen=True)
class Owner:
    key: keys.PrivateKey
    path: Path
    pub_path: Path

    @property
    def key_id(self) -> str:
        return keys.key_id(self.key.public_key())


def make_owner(directory: Path, name: str = "owner", key_type: str = "ed25519") -> Owner:
    key = keys.generate(key_type)  # type: ignore[arg-type]
    path = directory / f"{name}.pem"
    pub_path = keys.write_key_pair(path, key)
    return Owner(key, path, pub_path)


def duet_cli(
    controller: ControllerProcess, owner: Owner, home: Path, *args: str, cvm_roots: bool = False
) -> subprocess.CompletedProcess[str]:
    """The `duet` command as an owner runs it against a test controller (plain HTTP, TEE none: used
    unverified with DUET_INSECURE), in its own user directory; ``cvm_roots``: trusting the local
    CVMs' SIMULATED roots, as an auditor of this controller does."""
    env = {**os.environ, "DUET_URL": controller.url, "DUET_KEY": str(owner.path), "DUET_HOME": str(home), "DUET_INSECURE": "1"}
    if cvm_roots:
        env["DUET_CVM_ROOTS"] = str(controller.cvm_roots_file())
    return subprocess.run([sys.executable, "-m", "duet", *args], env=env, capture_output=True, text=True, timeout=120)


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``condition`` (every 50 ms) until it holds; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def start_cvm(client: DuetClient, cvm_type: str = "snp") -> str:
    accepted = client.start(cvm_type)
    job = client.wait_job(accepted["job_id"], timeout=60)
    assert job["status"] == "succeeded", job
    return accepted["cvm_id"]  # type: ignore[no-any-return]


@contextmanager
def serving(process: ControllerProcess) -> Iterator[ControllerProcess]:
    """A started controller, stopped afterwards with its local CVMs removed."""
    process.start(timeout=60)
    try:
        yield process
    finally:
        process.stop()
        remove_all(process.state_dir)


def sshd_processes(*words: str) -> list[int]:
    """Pids of sshd processes whose command line holds every one of ``words``."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                line = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if "sshd" in line and all(word in line for word in words):
                found.append(int(entry.name))
    return found


def open_ledger(directory: Path, controller: str = "c" * 64) -> Ledger:
    """A ledger on its own database, anchored in a real sealed state kept beside it, so it
    can be closed and opened again (and attacked on disk) like a controller's."""
    from duet.controller.sealed_state import SealedState
    from duet.ledger.log import Ledger
    from duet.storage import Database

    directory.mkdir(parents=True, exist_ok=True)
    key_path = directory / "anchor-signing.pem"
    first_start = not key_path.exists()
    if first_start:
        keys.write_private_key(key_path, keys.generate("ed25519"))
    anchor = SealedState.open(
        directory / "sealed", keys.load_private_key(key_path), first_start=first_start, owners={"o" * 64: "test owner"}
    )
    return Ledger(Database(directory / "db.sqlite3"), controller, anchor)
