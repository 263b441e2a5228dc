"""LocalProvider with a real OpenSSH sshd per CVM, driven through SshPool."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from duet.errors import Conflict, InvalidParams
from duet.providers.base import CvmSpec, Machine
from duet.providers.local import LocalProvider
from duet.remote.ssh import HostKeyMismatch, SshPool, SshTarget, SshUnavailable, fingerprint, generate_client_key

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
pytestmark = pytest.mark.skipif(not os.access(SSHD, os.X_OK), reason="needs OpenSSH sshd (make sshd)")
LIMIT = 1 << 20


@dataclass
class Cvm:
    provider: LocalProvider
    machine: Machine
    private_key: str
    public_key: str

    @property
    def target(self) -> SshTarget:
        m = self.machine
        return SshTarget(m.host, m.port, m.username, m.host_key, self.private_key)

    @property
    def dir(self) -> Path:
        return Path(self.machine.resources["dir"])


def gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return state in ("Z", "X")


async def poll(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached before the deadline"
        await asyncio.sleep(0.01)


@pytest.fixture
async def provider(tmp_path: Path) -> AsyncIterator[LocalProvider]:
    p = LocalProvider(tmp_path / "local-cvms", sshd_path=SSHD)
    yield p
    await p.reconcile([])  # no sshd outlives its test, even a failed one


@pytest.fixture
async def pool() -> AsyncIterator[SshPool]:
    p = SshPool()
    yield p
    await p.close()


async def make_cvm(provider: LocalProvider, cvm_id: str, steps: list[str] | None = None) -> Cvm:
    """A local CVM whose host key the provider states (the unattested path), for the SSH tests."""
    private, public = generate_client_key()
    machine = await provider.create(CvmSpec(cvm_id, "snp", attested=False), public, (steps if steps is not None else []).append)
    return Cvm(provider, machine, private, public)


@pytest.fixture
async def cvm(provider: LocalProvider) -> AsyncIterator[Cvm]:
    c = await make_cvm(provider, "cvm-a")
    yield c
    await provider.delete(Machine(cvm_id="cvm-a", provider="local"), lambda _: None)


async def run(pool: SshPool, cvm: Cvm, command: str, *, timeout: float = 10.0, output_limit: int = LIMIT):
    return await pool.run(cvm.machine.cvm_id, cvm.target, command, timeout=timeout, output_limit=output_limit)


# -- create and run -----------------------------------------------------------------------


async def test_create_describes_the_machine_and_reports_progress(provider: LocalProvider) -> None:
    steps: list[str] = []
    c = await make_cvm(provider, "cvm-p", steps)
    try:
        m = c.machine
        assert (m.provider, m.host) == ("local", "127.0.0.1")
        assert m.host_key == (c.dir / "ssh_host_ed25519_key.pub").read_text().strip()
        assert m.resources["pid"] == provider.sshd_pid("cvm-p")
        assert int((c.dir / "port").read_text()) == m.port
        assert (c.dir / "authorized_keys").read_text().strip() == c.public_key
        assert len(steps) >= 3 and any("sshd" in s for s in steps)
    finally:
        await provider.delete(c.machine, lambda _: None)


async def test_an_attested_cvm_keeps_its_host_key_to_itself(provider: LocalProvider) -> None:
    """The key is born in the CVM; the controller learns it over SSH and pins it once evidence binds it."""
    private, public = generate_client_key()
    machine = await provider.create(CvmSpec("cvm-q", "snp"), public, lambda _: None)
    try:
        assert machine.host_key == "" and (provider.root / "cvm-q" / "ssh_host_ed25519_key.pub").exists()
        assert (await provider.resume(machine)).host_key == ""  # nothing pinned yet: the provider says nothing either
        source = provider.evidence_source(machine, "snp")
        assert source.source == "simulated" and source.host_key_file.endswith("cvm-q/ssh_host_ed25519_key.pub")
    finally:
        await provider.delete(machine, lambda _: None)


async def test_run_output_streams_and_exit_status(cvm: Cvm, pool: SshPool) -> None:
    result = await run(pool, cvm, "echo out; echo err >&2; exit 7")
    assert (result.stdout, result.stderr, result.exit_status) == (b"out\n", b"err\n", 7)
    assert not result.timed_out


async def test_commands_run_in_the_cvm_home_with_home_set(cvm: Cvm, pool: SshPool) -> None:
    home = str(cvm.dir / "home")
    result = await run(pool, cvm, 'pwd; echo "$HOME"; touch made-here')
    assert result.stdout.decode().splitlines() == [home, home]
    assert (cvm.dir / "home" / "made-here").exists()


async def test_multi_line_commands_and_stdin_at_eof(cvm: Cvm, pool: SshPool) -> None:
    result = await run(pool, cvm, "x=1\nif [ $x = 1 ]; then\n  echo yes\nfi\ncat")
    assert result.stdout == b"yes\n" and result.exit_status == 0  # `cat` sees EOF at once


async def test_one_connection_serves_many_commands(cvm: Cvm, pool: SshPool) -> None:
    for _ in range(5):
        assert (await run(pool, cvm, "true")).exit_status == 0
    # sshd logs one "Accepted publickey" per authenticated connection, none per command.
    log = (cvm.dir / "sshd.log").read_text()
    assert log.count("Accepted publickey") == 1


async def test_timeout_kills_the_remote_process(cvm: Cvm, pool: SshPool) -> None:
    pidfile = cvm.dir / "home" / "child.pid"
    started = time.perf_counter()
    result = await run(pool, cvm, "sh -c 'echo $$ > child.pid; exec sleep 60'", timeout=0.5)
    assert result.timed_out and result.exit_status is None
    assert time.perf_counter() - started < 3
    child = int(pidfile.read_text())
    await poll(lambda: gone(child))


async def test_output_cap(cvm: Cvm, pool: SshPool) -> None:
    result = await run(pool, cvm, "head -c 1000000 /dev/zero; echo done >&2", output_limit=4096)
    assert len(result.stdout) == 4096 and result.stdout_truncated
    assert result.stderr == b"done\n" and not result.stderr_truncated
    assert result.exit_status == 0


# -- keys ---------------------------------------------------------------------------------


async def test_replaced_host_key_raises_mismatch(cvm: Cvm, pool: SshPool, tmp_path: Path) -> None:
    """Someone swaps the machine's host key and restarts sshd: the pinned key must catch it."""
    os.kill(cvm.provider.sshd_pid("cvm-a") or 0, signal.SIGKILL)
    await poll(lambda: cvm.provider.sshd_pid("cvm-a") is None)
    key = cvm.dir / "ssh_host_ed25519_key"
    key.unlink()
    key.with_suffix(".pub").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    impostor = key.with_name(key.name + ".pub").read_text().strip()
    moved = await cvm.provider.resume(cvm.machine)
    with pytest.raises(HostKeyMismatch) as info:
        await pool.run("cvm-a", replace(cvm.target, port=moved.port), "true", timeout=5, output_limit=LIMIT)
    assert info.value.expected_fingerprint == fingerprint(cvm.machine.host_key)
    assert info.value.presented_fingerprint == fingerprint(impostor)


async def test_wrong_client_key_is_refused(cvm: Cvm, pool: SshPool) -> None:
    other_private, _ = generate_client_key()
    with pytest.raises(SshUnavailable, match="authentication") as info:
        await pool.run("cvm-a", replace(cvm.target, client_key=other_private), "true", timeout=5, output_limit=LIMIT)
    body = other_private.splitlines()[1]
    assert body not in str(info.value) and body not in repr(info.value)


async def test_wait_ready_on_a_fresh_machine(cvm: Cvm, pool: SshPool) -> None:
    await pool.wait_ready(cvm.target, timeout=5)


# -- lockdown -----------------------------------------------------------------------------


async def test_lockdown_refuses_the_key_and_resume_keeps_it_down(cvm: Cvm, pool: SshPool) -> None:
    result = await run(pool, cvm, cvm.provider.lockdown_command(cvm.machine))
    assert result.exit_status == 0, result.stderr
    assert (cvm.dir / "locked").exists()
    assert (cvm.dir / "authorized_keys").read_text() == ""
    await poll(lambda: cvm.provider.sshd_pid("cvm-a") is None)

    # The pooled, already authenticated connection is ended too.
    async def refused() -> bool:
        try:
            await run(pool, cvm, "true", timeout=2)
        except SshUnavailable:
            return True
        return False

    deadline = time.monotonic() + 5
    while not await refused():
        assert time.monotonic() < deadline, "the controller could still run commands after lockdown"
        await asyncio.sleep(0.05)

    # A restart does not bring sshd back...
    resumed = await cvm.provider.resume(cvm.machine)
    assert cvm.provider.sshd_pid("cvm-a") is None
    assert resumed.cvm_id == "cvm-a"

    # ...and even an sshd started by hand from the CVM's own config refuses the key.
    port, _ = await cvm.provider._start_sshd(cvm.dir, None)
    with pytest.raises(SshUnavailable) as info:
        await pool.wait_ready(replace(cvm.target, port=port), timeout=0.5)
    assert info.value.reason == "auth"


# -- delete, reconcile, resume --------------------------------------------------------------


async def test_delete_with_only_the_cvm_id_kills_sshd_and_removes_the_dir(provider: LocalProvider) -> None:
    c = await make_cvm(provider, "cvm-d")
    pid = provider.sshd_pid("cvm-d")
    assert pid is not None and not gone(pid)
    await provider.delete(Machine(cvm_id="cvm-d", provider="local"), lambda _: None)
    assert gone(pid)
    assert not c.dir.exists()
    await provider.delete(Machine(cvm_id="cvm-d", provider="local"), lambda _: None)  # idempotent


async def test_delete_finds_sshd_without_its_pid_file(provider: LocalProvider) -> None:
    """A create killed right after sshd started may have left no pid file."""
    c = await make_cvm(provider, "cvm-n")
    pid = provider.sshd_pid("cvm-n")
    assert pid is not None
    (c.dir / "sshd.pid").unlink()
    await provider.delete(Machine(cvm_id="cvm-n", provider="local"), lambda _: None)
    assert gone(pid) and not c.dir.exists()


async def test_delete_ends_open_connections(cvm: Cvm, pool: SshPool) -> None:
    await run(pool, cvm, "true")
    listener = cvm.provider.sshd_pid("cvm-a")
    children = [int(p) for p in subprocess.run(["pgrep", "-P", str(listener)], capture_output=True, text=True).stdout.split()]
    assert children
    await cvm.provider.delete(cvm.machine, lambda _: None)
    assert all(gone(p) for p in children + [listener or 0])


async def test_reconcile_removes_strays_and_keeps_known(provider: LocalProvider, pool: SshPool) -> None:
    keep = await make_cvm(provider, "cvm-keep")
    stray = await make_cvm(provider, "cvm-stray")
    stray_pid = provider.sshd_pid("cvm-stray")
    try:
        live = await provider.reconcile([keep.machine, Machine(cvm_id="cvm-vanished", provider="local")])
        assert [m.cvm_id for m in live] == ["cvm-keep"]
        assert stray_pid is not None and gone(stray_pid) and not stray.dir.exists()
        assert (await pool.run("cvm-keep", keep.target, "true", timeout=5, output_limit=LIMIT)).exit_status == 0
    finally:
        await provider.delete(keep.machine, lambda _: None)


async def test_resume_restarts_a_killed_sshd_with_the_same_host_key(cvm: Cvm, pool: SshPool) -> None:
    old = cvm.provider.sshd_pid("cvm-a")
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await poll(lambda: gone(old))
    resumed = await cvm.provider.resume(cvm.machine)
    new = cvm.provider.sshd_pid("cvm-a")
    assert new is not None and new != old
    assert resumed.host_key == cvm.machine.host_key
    assert resumed.port == cvm.machine.port  # the old port was free again
    result = await pool.run("cvm-a", cvm.target, "echo back", timeout=5, output_limit=LIMIT)
    assert result.stdout == b"back\n"


async def test_resume_moves_to_a_new_port_when_the_old_one_is_taken(cvm: Cvm, pool: SshPool) -> None:
    old = cvm.provider.sshd_pid("cvm-a") or 0
    os.kill(old, signal.SIGKILL)
    await poll(lambda: gone(old))
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    squatter.bind(("127.0.0.1", cvm.machine.port))
    squatter.listen()
    try:
        resumed = await cvm.provider.resume(cvm.machine)
    finally:
        squatter.close()
    assert resumed.port != cvm.machine.port
    target = replace(cvm.target, port=resumed.port)
    assert (await pool.run("cvm-a", target, "true", timeout=5, output_limit=LIMIT)).exit_status == 0


async def test_resume_of_a_live_machine_changes_nothing(cvm: Cvm) -> None:
    pid = cvm.provider.sshd_pid("cvm-a")
    resumed = await cvm.provider.resume(cvm.machine)
    assert cvm.provider.sshd_pid("cvm-a") == pid
    assert (resumed.port, resumed.host_key) == (cvm.machine.port, cvm.machine.host_key)


_CHILD = """
import asyncio, json, sys
from pathlib import Path
from duet.providers.base import CvmSpec
from duet.providers.local import LocalProvider
async def main():
    m = await LocalProvider(Path(sys.argv[1]), sshd_path=sys.argv[2]).create(CvmSpec("cvm-k", "snp"), sys.argv[3], lambda s: None)
    print(json.dumps(m.to_json()), flush=True)
    await asyncio.sleep(3600)
asyncio.run(main())
"""


async def test_sshd_survives_sigkill_of_the_controller(provider: LocalProvider, pool: SshPool) -> None:
    private, public = generate_client_key()
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(provider.root), SSHD, public],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 30)  # type: ignore[union-attr]
    finally:
        child.kill()
        child.wait()
    machine = Machine.from_json(json.loads(line))
    pid = provider.sshd_pid("cvm-k")
    assert pid is not None and not gone(pid)
    target = SshTarget(machine.host, machine.port, machine.username, machine.host_key, private)
    assert (await pool.run("cvm-k", target, "true", timeout=5, output_limit=LIMIT)).exit_status == 0
    assert (await provider.resume(machine)).port == machine.port  # reused, not restarted
    assert provider.sshd_pid("cvm-k") == pid
    await provider.reconcile([])
    assert gone(pid) and not (provider.root / "cvm-k").exists()


# -- input checks --------------------------------------------------------------------------


async def test_create_refuses_an_existing_directory(cvm: Cvm) -> None:
    with pytest.raises(Conflict):
        await cvm.provider.create(CvmSpec("cvm-a", "snp"), cvm.public_key, lambda _: None)
    assert cvm.provider.sshd_pid("cvm-a") == cvm.machine.resources["pid"]  # the original is untouched


@pytest.mark.parametrize("bad_id", ["../escape", "a/b", ".hidden", ""])
async def test_create_refuses_ids_that_are_not_a_plain_name(provider: LocalProvider, bad_id: str) -> None:
    with pytest.raises(InvalidParams):
        await provider.create(CvmSpec(bad_id, "snp"), generate_client_key()[1], lambda _: None)


@pytest.mark.parametrize("shape", ["two keys", "options"])
async def test_create_refuses_anything_but_one_plain_key_line(provider: LocalProvider, shape: str) -> None:
    _, public = generate_client_key()
    line = public + "\n" + generate_client_key()[1] if shape == "two keys" else 'command="id" ' + public
    with pytest.raises(InvalidParams):
        await provider.create(CvmSpec("cvm-o", "snp"), line, lambda _: None)
    assert not (provider.root / "cvm-o").exists()
