"""A real OpenSSH sshd on 127.0.0.1 standing in for a cloud VM's guest.

The fake clouds start one when a VM "boots", with exactly what the guest would have: the login
key from the VM's API body and the host key from its cloud-init user-data (the owner's opt-out)
or, for an attested CVM, the one the guest generated itself at first boot. So a test can check
which key the controller pins and that it logs in with its own.

``environment`` becomes the sessions' environment (``SetEnv``: the fake guest's PATH, with its
fake tools first) and ``force_command`` wraps every session (``ForceCommand``: the fake guest's
view of its own file system, ``tests/fakes/guest_shell.py``).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSshd:
    """One sshd process with its own directory, host key and authorized key."""

    def __init__(
        self,
        root: Path,
        port: int,
        host_private_key: str,
        authorized_keys: list[str],
        *,
        host_public_key: str = "",
        environment: dict[str, str] | None = None,
        force_command: str = "",
    ) -> None:
        self.root = root
        self.port = port
        self._host_private_key = host_private_key
        self._host_public_key = host_public_key
        self._authorized_keys = authorized_keys
        self._environment = environment or {}
        self._force_command = force_command
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def host_key_file(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    def start(self, timeout: float = 10.0) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        host_key = self.host_key_file
        fd = os.open(host_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(self._host_private_key if self._host_private_key.endswith("\n") else self._host_private_key + "\n")
        if self._host_public_key:
            host_key.with_name(host_key.name + ".pub").write_text(self._host_public_key.strip() + "\n")
        (self.root / "authorized_keys").write_text("".join(k.strip() + "\n" for k in self._authorized_keys))
        config = self.root / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
            f"AuthorizedKeysFile {self.root / 'authorized_keys'}\nPidFile {self.root / 'sshd.pid'}\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nLogLevel ERROR\n"
            + ("SetEnv " + " ".join(f'{k}="{v}"' for k, v in self._environment.items()) + "\n" if self._environment else "")
            + (f"ForceCommand {self._force_command}\n" if self._force_command else "")
        )
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        self._proc = subprocess.Popen(
            [SSHD, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.root / "sshd.log", "wb"),
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {(self.root / 'sshd.log').read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError("sshd did not start listening in time")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None
