"""Run a controller as a child process on loopback: for ``duet demo``, tests and benchmarks.

A real process (not an in-process app) so that what is exercised is what users run, and so
that it can be killed with SIGKILL and restarted on the same state directory.

``tls=False`` (the default, for tests that talk raw HTTP to the controller) adds ``--no-tls``;
``tls=True`` serves HTTPS with the controller's sealed TLS key, as in production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from duet.errors import DuetError
from duet.providers.local import LocalProvider


def remove_all(state_dir: Path) -> None:
    """Stop every local CVM of a controller's state directory and remove it.

    Local CVMs outlive their controller on purpose (a restarted controller reuses them); a
    demo, a test or a benchmark that is done with a controller must not leave them running."""
    root = Path(state_dir) / "local-cvms"
    if root.is_dir():
        asyncio.run(LocalProvider(root).reconcile([]))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ControllerProcess:
    def __init__(
        self,
        state_dir: Path,
        owner_keys: list[Path],
        *,
        provider: str | tuple[str, ...] = "local",
        tee: str = "none",
        port: int | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        tls: bool = False,
        trust_simulated_cvm: bool = True,
    ) -> None:
        """``trust_simulated_cvm``: local CVMs' SIMULATED attestation is accepted (as the demo
        does); False leaves only the real roots, so local CVMs fail their attestation."""
        self.state_dir = state_dir
        self.owner_keys = owner_keys
        self.providers = (provider,) if isinstance(provider, str) else provider
        self.tee = tee
        self.port = port or free_port()
        self.extra_args = extra_args
        self.env = env or {}
        self.tls = tls
        self.trust_simulated_cvm = trust_simulated_cvm
        self.log_path = state_dir.parent / f"{state_dir.name}-controller.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def cvm_roots_file(self) -> Path:
        """The roots of this controller's local CVMs' SIMULATED hardware, as a PEM file for
        ``duet audit --cvm-roots`` (an auditor trusting them, as the tests and the demo do)."""
        from duet.providers.local_tsm import roots_pem

        path = self.state_dir.parent / f"{self.state_dir.name}-cvm-roots.pem"
        path.write_bytes(roots_pem(self.state_dir / "local-cvms" / ".simulated-hardware"))
        return path

    def command(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "duet",
            "controller",
            "serve",
            "--state-dir",
            str(self.state_dir),
            *(arg for name in self.providers for arg in ("--provider", name)),
            "--tee",
            self.tee,
            "--listen",
            f"127.0.0.1:{self.port}",
        ]
        for key in self.owner_keys:
            args += ["--owner-key", str(key)]
        if not self.tls:
            args.append("--no-tls")
        if self.trust_simulated_cvm:
            args.append("--trust-simulated-cvm")
        return args + list(self.extra_args)

    def start(self, timeout: float = 30.0) -> ControllerProcess:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **self.env})
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise DuetError(
                    f"the controller exited at start (status {self.process.returncode}); see {self.log_path}",
                    code="controller_failed",
                )
            try:
                # A liveness probe only: it believes nothing it reads, so the certificate is not checked here.
                if httpx.get(f"{self.url}/v1/ledger/head", timeout=1.0, verify=False).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.kill()
        raise DuetError(f"the controller did not answer within {timeout:.0f} s; see {self.log_path}", code="controller_failed")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self) -> None:
        """SIGKILL: the controller gets no chance to clean up, as in a crash."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self) -> ControllerProcess:
        self.stop()
        return self.start()

    def cvm_login_key(self, cvm_id: str) -> str | None:
        """A CVM's SSH private key as this controller holds it, for tests and benchmarks: the
        ciphertext from the database opened with its data key from the sealed anchor, which only
        an unprotected TEE (none, simulated) leaves readable. None once the key was destroyed."""
        import base64
        import sqlite3

        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        from duet.controller.sealed_state import ANCHOR_FILE, read_anchor

        data_keys = read_anchor(self.state_dir / "sealed" / ANCHOR_FILE)["data_keys"]
        with sqlite3.connect(self.state_dir / "duet.sqlite3") as db:
            row = db.execute("SELECT ssh_private_key FROM cvms WHERE id = ?", (cvm_id,)).fetchone()
        if cvm_id not in data_keys or row is None or row[0] is None:
            return None
        sealed = bytes(row[0])
        return AESGCM(base64.b64decode(data_keys[cvm_id])).decrypt(sealed[:12], sealed[12:], cvm_id.encode()).decode()

    def cvm_machine(self, cvm_id: str) -> dict[str, object]:
        """The CVM's machine record as stored (address, user, pinned host key)."""
        import json
        import sqlite3

        with sqlite3.connect(self.state_dir / "duet.sqlite3") as db:
            return json.loads(db.execute("SELECT machine FROM cvms WHERE id = ?", (cvm_id,)).fetchone()[0])  # type: ignore[no-any-return]

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> ControllerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
