"""The embedded default provider: one real OpenSSH ``sshd`` per CVM on 127.0.0.1.

There is no isolation at all (commands run as the controller's own OS user); it exists so
that development, demos and tests exercise the real SSH path: pinned host keys, key-only
login, lockdown. Everything about a CVM lives in ``root/<cvm_id>/`` and every sshd is found
again from that directory alone, because the controller may be killed at any step and must
then reuse or clean up what it started.

Each sshd daemonizes itself (its own session, parent = init), so it outlives a controller
killed with SIGKILL. Processes are identified by their command line, which names the CVM's
config file, never by pid alone: a pid file can outlive its process and the pid be reused.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import asyncssh
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

if TYPE_CHECKING:
    from duet.attestation.bundle import CvmRoots

from duet.errors import ConfigError, Conflict, InvalidParams, NotFound, UpstreamError
from duet.providers.base import LOCKDOWN_MARKER, CvmSpec, CvmType, EvidenceSource, Machine, Progress

_HOST_KEY = "ssh_host_ed25519_key"
_CONFIG = "sshd_config"
_AUTHORIZED = "authorized_keys"
_PID = "sshd.pid"
_LOG = "sshd.log"
_PORT = "port"
_LOCKED = "locked"
_CVM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 5.0
_BIND_ATTEMPTS = 3


def _find_sshd(explicit: str | None) -> str:
    candidate = explicit or shutil.which("sshd") or "/usr/sbin/sshd"
    path = Path(candidate)
    if not path.is_absolute():  # sshd refuses to run (re-exec) from a relative path
        found = shutil.which(candidate)
        path = Path(found) if found else path.absolute()
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise ConfigError(
            f"OpenSSH sshd not found at {path}; install openssh-server (make sshd) or pass sshd_path",
            code="sshd_missing",
        )
    return str(path)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Whether sshd could listen there. Like sshd, use SO_REUSEADDR: connections left over
    from a killed sshd (TIME_WAIT, or still held by its children) do not block a listener."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _ppid_and_state(pid: int) -> tuple[int, str] | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the name in parentheses may hold spaces
    return int(fields[1]), fields[0]


def _alive(pid: int) -> bool:
    """A zombie counts as gone: it holds no port and no file, only waits to be reaped."""
    info = _ppid_and_state(pid)
    return info is not None and info[1] not in ("Z", "X")


def _children(pid: int) -> list[int]:
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            info = _ppid_and_state(int(entry.name))
            if info is not None and info[0] == pid:
                kids.append(int(entry.name))
    return kids


def _reap(pid: int) -> None:
    # Only succeeds for sshd launchers that are our own children; others are init's to reap.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


class LocalProvider:
    """Runs each CVM as an sshd under ``root/<cvm_id>/``; see the module docstring."""

    name = "local"

    def __init__(self, root: Path, *, sshd_path: str | None = None) -> None:
        self.root = Path(root).absolute()
        self._sshd_path = sshd_path
        self._user = getpass.getuser()

    # -- paths and process lookup ---------------------------------------------------------

    def _dir(self, cvm_id: str) -> Path:
        if not _CVM_ID.match(cvm_id):
            raise InvalidParams(f"cvm id {cvm_id!r} cannot name a local CVM directory (letters, digits, . _ -)")
        return self.root / cvm_id

    def _listeners(self, cvm_dir: Path) -> list[int]:
        """Live sshd listeners started for this directory: the pid file's, if it is still
        ours, plus any found by command line (a create killed before the pid file existed)."""
        marker = f"-f {cvm_dir / _CONFIG} "
        pids: set[int] = set()
        with contextlib.suppress(OSError, ValueError):
            pid = int((cvm_dir / _PID).read_text().strip())
            if marker in _cmdline(pid) and _alive(pid):
                pids.add(pid)
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                pid = int(entry.name)
                line = _cmdline(pid)
                if "[listener]" in line and marker in line and _alive(pid):
                    pids.add(pid)
        return sorted(pids)

    def sshd_pid(self, cvm_id: str) -> int | None:
        """The CVM's live sshd listener, if any (tests use it to kill or check the process)."""
        pids = self._listeners(self._dir(cvm_id))
        return pids[0] if pids else None

    # -- files ---------------------------------------------------------------------------

    def _write_config(self, cvm_dir: Path, port: int) -> None:
        home = cvm_dir / "home"
        # HOME comes from SetEnv, so the login shell reads the CVM's dot files, not the
        # controller user's (a pyenv-laden ~/.bashrc costs 140 ms per command). sshd always
        # starts in the passwd home, so ForceCommand moves to the CVM home and then runs the
        # client's command (or sftp-server) in that same shell: eval saves a second shell
        # start (about 1.5 ms) compared with exec "$SHELL" -c.
        force = (
            'cd "$HOME" && if [ -n "${SSH_ORIGINAL_COMMAND+x}" ]; then eval "$SSH_ORIGINAL_COMMAND"; else exec "$SHELL" -l; fi'
        )
        lines = [
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f'HostKey "{cvm_dir / _HOST_KEY}"',
            f'PidFile "{cvm_dir / _PID}"',
            f'AuthorizedKeysFile "{cvm_dir / _AUTHORIZED}"',
            f"AllowUsers {self._user}",
            "StrictModes no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "HostbasedAuthentication no",
            "PermitEmptyPasswords no",
            "PermitRootLogin prohibit-password",
            "UsePAM no",
            "PermitUserEnvironment no",
            "AllowAgentForwarding no",
            "AllowTcpForwarding no",
            "X11Forwarding no",
            "PermitTunnel no",
            "PrintMotd no",
            "PrintLastLog no",
            "UseDNS no",
            "MaxSessions 64",
            f'SetEnv "HOME={home}"',
            "ClientAliveInterval 30",
            f"ForceCommand {force}",
        ]
        sftp = Path("/usr/lib/openssh/sftp-server")
        if sftp.is_file():
            lines.append(f"Subsystem sftp {sftp}")
        (cvm_dir / _CONFIG).write_text("\n".join(lines) + "\n")
        (cvm_dir / _PORT).write_text(f"{port}\n")

    @staticmethod
    def _write_host_key(cvm_dir: Path) -> str:
        key = ed25519.Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        fd = os.open(cvm_dir / _HOST_KEY, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
        finally:
            os.close(fd)
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        (cvm_dir / f"{_HOST_KEY}.pub").write_text(public + "\n")
        return public

    @staticmethod
    def _authorized_line(ssh_public_key: str) -> str:
        """Re-export the key so that the file holds exactly one key and no sshd options."""
        line = ssh_public_key.strip()
        try:
            if "\n" in line or "\r" in line:
                raise ValueError("more than one line")
            key = asyncssh.import_public_key(line)
        except (asyncssh.KeyImportError, ValueError):
            raise InvalidParams("the controller's SSH public key is not an OpenSSH public key line") from None
        return key.export_public_key("openssh").decode().strip()

    # -- sshd ----------------------------------------------------------------------------

    async def _start_sshd(self, cvm_dir: Path, preferred_port: int | None) -> tuple[int, int]:
        """Start the CVM's sshd and return (port, pid) once it accepts connections.

        sshd binds before it daemonizes, so the launcher's exit status already says whether
        the port was taken; a lost race for a free port is retried with another port."""
        sshd = _find_sshd(self._sshd_path)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation directory
        port = preferred_port if preferred_port and _port_is_free(preferred_port) else _free_port()
        for attempt in range(_BIND_ATTEMPTS):
            self._write_config(cvm_dir, port)
            (cvm_dir / _PID).unlink(missing_ok=True)
            proc = await asyncio.create_subprocess_exec(
                sshd,
                "-f",
                str(cvm_dir / _CONFIG),
                "-E",
                str(cvm_dir / _LOG),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
                # Not the controller's environment (it may hold cloud credentials). The
                # variable also reserves room for sshd's process title, which names the
                # config file and is how _listeners finds this sshd again.
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DUET_CVM_DIR": str(cvm_dir)},
            )
            _, err = await asyncio.wait_for(proc.communicate(), _START_TIMEOUT_S)
            if proc.returncode == 0:
                pid = await self._wait_listening(cvm_dir, port)
                return port, pid
            log = _tail(cvm_dir / _LOG) + err.decode(errors="replace").strip()
            if "bind" not in log.lower() or attempt == _BIND_ATTEMPTS - 1:
                raise UpstreamError(f"local sshd for {cvm_dir.name} did not start: {log[-500:]}", code="local_sshd_failed")
            port = _free_port()
        raise AssertionError("unreachable")

    async def _wait_listening(self, cvm_dir: Path, port: int) -> int:
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            pids = self._listeners(cvm_dir)
            if pids and await _accepts(port):
                return pids[0]
            if time.monotonic() > deadline:
                raise UpstreamError(
                    f"local sshd for {cvm_dir.name} does not accept connections on port {port}: {_tail(cvm_dir / _LOG)}",
                    code="local_sshd_failed",
                )
            await asyncio.sleep(0.01)

    async def _stop_sshd(self, cvm_dir: Path) -> None:
        """Kill the listener and its connections, and only return once they are gone:
        SIGTERM first, SIGKILL for whatever is left after a grace period."""
        listeners = self._listeners(cvm_dir)
        victims = [kid for pid in listeners for kid in _children(pid)] + listeners
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in victims:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + _STOP_TIMEOUT_S
            while time.monotonic() < deadline:
                for pid in victims:
                    _reap(pid)
                victims = [pid for pid in victims if _alive(pid)]
                if not victims:
                    return
                await asyncio.sleep(0.01)
        raise UpstreamError(f"sshd processes {victims} of {cvm_dir.name} survived SIGKILL", code="local_delete_failed")

    # -- Provider protocol ----------------------------------------------------------------

    async def create(self, spec: CvmSpec, ssh_public_key: str, progress: Progress) -> Machine:
        cvm_dir = self._dir(spec.cvm_id)
        authorized = self._authorized_line(ssh_public_key)
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            cvm_dir.mkdir(mode=0o700)
        except FileExistsError:
            raise Conflict(f"local CVM directory {cvm_dir} already exists; stop {spec.cvm_id} first") from None
        try:
            progress("preparing CVM directory")
            (cvm_dir / "home").mkdir()
            (cvm_dir / _AUTHORIZED).write_text(authorized + "\n")
            progress("generating SSH host key")  # as a guest does at first boot
            host_key = self._write_host_key(cvm_dir)
            progress("starting sshd")
            port, pid = await self._start_sshd(cvm_dir, None)
            progress(f"sshd listening on 127.0.0.1:{port}")
        except BaseException:
            with contextlib.suppress(Exception):
                await self._remove(cvm_dir)
            raise
        # An attested CVM's key is learnt from the CVM itself and pinned by its evidence; the
        # "cloud" says it only when the owner opted out of attestation.
        return self._machine(spec.cvm_id, cvm_dir, port, pid, "" if spec.attested else host_key)

    def _machine(self, cvm_id: str, cvm_dir: Path, port: int, pid: int | None, host_key: str) -> Machine:
        return Machine(
            cvm_id=cvm_id,
            provider=self.name,
            host="127.0.0.1",
            port=port,
            username=self._user,
            host_key=host_key,
            resources={"dir": str(cvm_dir), "pid": pid},
        )

    async def _remove(self, cvm_dir: Path) -> None:
        await self._stop_sshd(cvm_dir)
        shutil.rmtree(cvm_dir, ignore_errors=True)
        if cvm_dir.exists():
            raise UpstreamError(f"could not remove local CVM directory {cvm_dir}", code="local_delete_failed")

    async def delete(self, machine: Machine, progress: Progress | None = None) -> None:
        cvm_dir = self._dir(machine.cvm_id)
        if progress:
            progress("stopping sshd")
        await self._remove(cvm_dir)
        if progress:
            progress("removed CVM directory")

    async def reconcile(self, known: list[Machine]) -> list[Machine]:
        """Remove every CVM directory the controller does not know (a start it never
        recorded, or a stop it did not finish); keep the known ones whose directory exists."""
        names = {m.cvm_id for m in known}
        if self.root.is_dir():
            for entry in sorted(self.root.iterdir()):
                if entry.is_dir() and entry.name not in names and _CVM_ID.match(entry.name):
                    await self._remove(entry)
        return [m for m in known if (self.root / m.cvm_id).is_dir()]

    async def resume(self, machine: Machine) -> Machine:
        """Restart a dead sshd with the CVM's own host key; a locked-down CVM stays down."""
        cvm_dir = self._dir(machine.cvm_id)
        if not cvm_dir.is_dir():
            raise NotFound(f"local CVM {machine.cvm_id} has no directory {cvm_dir}; it cannot be resumed", code="machine_missing")
        # The key on "disk" now (so a swapped key shows as a mismatch), once one was pinned.
        host_key = (cvm_dir / f"{_HOST_KEY}.pub").read_text().strip() if machine.host_key else ""
        if (cvm_dir / _LOCKED).exists():
            return machine
        pids = self._listeners(cvm_dir)
        if pids:
            port = _read_port(cvm_dir) or machine.port
            return self._machine(machine.cvm_id, cvm_dir, port, pids[0], host_key)
        port, pid = await self._start_sshd(cvm_dir, _read_port(cvm_dir) or machine.port)
        return self._machine(machine.cvm_id, cvm_dir, port, pid, host_key)

    @property
    def hardware_dir(self) -> Path:
        """The SIMULATED hardware every local CVM shares (duet.providers.local_tsm): keys made here."""
        return self.root / ".simulated-hardware"

    def simulated_roots(self) -> CvmRoots:
        """The SIMULATED AMD and Intel roots of :attr:`hardware_dir` (made on first use)."""
        from duet.providers.local_tsm import simulated_roots

        return simulated_roots(self.hardware_dir)

    def evidence_source(self, machine: Machine, cvm_type: CvmType) -> EvidenceSource:
        simulator = (
            sys.executable,
            "-m",
            "duet.providers.local_tsm",
            "--hardware",
            str(self.hardware_dir),
            "--platform",
            cvm_type,
        )
        host_key = self._dir(machine.cvm_id) / f"{_HOST_KEY}.pub"
        return EvidenceSource("simulated", host_key_file=str(host_key), privileged=False, simulator=simulator)

    def lockdown_command(self, machine: Machine) -> str:
        """Empty authorized_keys, mark the CVM locked, stop its listener; a moment later,
        end the connections it still has (including the controller's pooled one), so that
        not even an already authenticated controller keeps a way in."""
        cvm_dir = self._dir(machine.cvm_id)
        keys, locked, pidfile = (shlex.quote(str(cvm_dir / n)) for n in (_AUTHORIZED, _LOCKED, _PID))
        return (
            f": > {keys} && touch {locked} && "
            f'pid=$(cat {pidfile}) && kids=$(pgrep -P "$pid" || true) && kill "$pid" && '
            'if [ -n "$kids" ]; then (sleep 1; kill $kids) </dev/null >/dev/null 2>&1 & fi; '
            f"echo {LOCKDOWN_MARKER}"
        )


def _read_port(cvm_dir: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((cvm_dir / _PORT).read_text().strip())
    return None


def _tail(path: Path, limit: int = 2000) -> str:
    with contextlib.suppress(OSError):
        return path.read_text(errors="replace")[-limit:].strip()
    return ""


async def _accepts(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
