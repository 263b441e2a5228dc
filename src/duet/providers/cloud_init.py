"""What every cloud provider hands the guest: the #cloud-config its cloud-init runs at first boot.

An attested CVM (``CvmSpec.attested``, the default) gets **no host key** from here: cloud-init
deletes whatever host keys the image carried (``ssh_deletekeys: true``) and the guest generates
a fresh Ed25519 one at first boot (``ssh_genkeytypes: [ed25519]``), so the private half is born
in the CVM and never travels through the cloud's control plane. The controller learns the
public half at the first connection and pins it only once the CVM's evidence binds it
(design §10, docs/attestation.md).

The owner's opt-out (``attested=False``, ``--no-cvm-attestation``) keeps the older scheme: the
provider generates an Ed25519 pair here (:func:`generate_host_key`), hands both halves to
cloud-init (``ssh_keys``, no other host key survives) and returns the public half as
``Machine.host_key`` to be pinned before the first connection. Limit, stated plainly: that
user-data passes through the cloud's control plane, so the cloud operator could learn the private
half; that pin defeats a man in the middle on the network, not the cloud itself.

Either way the document keeps the lockdown preparations: no password login, no root login, and
the Azure guest agent's extensions switched off at every boot.
"""

from __future__ import annotations

import base64
import shlex
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from duet.providers.base import LOCKDOWN_MARKER


@dataclass(frozen=True)
class HostKey:
    """An SSH host key pair in OpenSSH form. ``repr`` never shows the private half."""

    public: str
    private: str = field(repr=False)


def generate_host_key(comment: str = "") -> HostKey:
    """A fresh Ed25519 host key pair; ``comment`` ends the public line (e.g. the CVM id)."""
    key = ed25519.Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    ).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    if comment:
        public = f"{public} {comment}"
    return HostKey(public=public, private=private)


def _block(text: str, indent: str) -> str:
    return "".join(f"{indent}{line}\n" for line in text.strip("\n").splitlines())


def user_data(host_key: HostKey | None, *, authorized_key: str | None = None, username: str | None = None) -> str:
    """The ``#cloud-config`` document of a cloud CVM.

    ``host_key`` None (an attested CVM): the document names no host key; the guest deletes the
    image's and generates its own Ed25519 key at first boot. Given (the owner's opt-out): it is
    installed as the only SSH host key, and the result contains its private half: never log it.

    ``authorized_key``/``username`` are for clouds with no native way to install a login key
    (none of the three here needs it; Azure, AWS and GCP each take the key in their own API),
    so by default the document carries no login key at all.
    """
    lines = [
        "#cloud-config",
        # Azure's guest agent runs extensions (Run Command, VMAccess) for whoever owns the
        # subscription; switched off in the guest at every boot, whatever the cloud API says.
        "bootcmd:",
        f"  - [sh, -c, {_json_string(DISABLE_AGENT_EXTENSIONS)}]",
        "ssh_deletekeys: true",
        "ssh_genkeytypes: []" if host_key is not None else "ssh_genkeytypes: [ed25519]",
        "ssh_pwauth: false",
        "disable_root: true",
    ]
    if host_key is not None:
        lines += [
            "ssh_keys:",
            "  ed25519_private: |",
            _block(host_key.private, "    ").rstrip("\n"),
            f"  ed25519_public: {host_key.public}",
        ]
    if authorized_key and username:
        lines += [
            "users:",
            f"  - name: {username}",
            "    sudo: ALL=(ALL) NOPASSWD:ALL",
            "    shell: /bin/bash",
            "    ssh_authorized_keys:",
            f"      - {authorized_key}",
        ]
    return "\n".join(lines) + "\n"


DISABLE_AGENT_EXTENSIONS = (
    "if [ -f /etc/waagent.conf ]; then "
    "sed -i -E 's/^#? *Extensions.Enabled=.*/Extensions.Enabled=n/' /etc/waagent.conf; "
    "grep -q '^Extensions.Enabled=n' /etc/waagent.conf || echo Extensions.Enabled=n >> /etc/waagent.conf; "
    "systemctl try-restart walinuxagent.service >/dev/null 2>&1 || true; fi"
)
"""The in-guest half of the Azure lockdown (docs/providers.md): the VM agent runs no extension."""


def _json_string(text: str) -> str:
    """A YAML double-quoted scalar (JSON strings are valid YAML)."""
    import json

    return json.dumps(text)


def user_data_b64(host_key: HostKey | None, **kw: str) -> str:
    """Base64 of :func:`user_data`, the form Azure's ``customData`` wants."""
    return base64.b64encode(user_data(host_key, **kw).encode()).decode()


def key_blob(openssh_public_line: str) -> str:
    """The base64 part of ``ssh-ed25519 AAAA... comment``: what identifies the key in a file."""
    parts = openssh_public_line.split()
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line")
    return parts[1]


def lockdown_command(controller_public_key: str) -> str:
    """Remove the controller's login key and stop SSH for good (``mark in-service --final``).

    The key is matched by its base64 blob (``grep -F``, no regex surprises). SSH is stopped
    both as a service and as a socket (Ubuntu 24.04 socket-activates sshd) and masked so that
    a reboot or a package update does not bring it back. The running session survives the
    stop, so the command's exit status still reaches the controller.
    """
    blob = shlex.quote(key_blob(controller_public_key))
    return (
        'set -e; f="$HOME/.ssh/authorized_keys"; '
        f'if [ -f "$f" ]; then grep -vF {blob} "$f" > "$f.duet" || true; '
        'cat "$f.duet" > "$f"; rm -f "$f.duet"; fi; '
        "for u in ssh.socket ssh.service sshd.service; do "
        'sudo systemctl disable --now "$u" >/dev/null 2>&1 || true; '
        'sudo systemctl mask "$u" >/dev/null 2>&1 || true; done; '
        f"if grep -qF {blob} \"$f\" 2>/dev/null; then echo 'the key is still authorized' >&2; exit 1; fi; "
        f"echo {LOCKDOWN_MARKER}"
    )
