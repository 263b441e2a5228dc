"""What a fake Azure Confidential VM's guest has besides its sshd: a SIMULATED vTPM, the way to
the instance metadata service, passwordless ``sudo``, and its own ``/etc/ssh``.

``tests/fakes/fake_arm.py`` makes one per VM it boots and starts the VM's sshd with
:meth:`FakeGuest.environment` (sshd ``SetEnv``) and :meth:`FakeGuest.force_command` (sshd
``ForceCommand``), so that the controller's real collection command,
``[sudo -n] python3 -c <collect_evidence.py> --source azure-vtpm ...``, runs on it as on Azure:

- ``bin/`` comes first on the guest's PATH, with ``tpm2_nvreadpublic``, ``tpm2_nvdefine``,
  ``tpm2_nvwrite`` and ``tpm2_nvread`` (``tests/fakes/fake_vtpm.py`` on ``vtpm/``), a ``sudo``
  that runs the command as it is (a cloud image's login user has passwordless sudo; this guest's
  user is whoever runs the tests, root or not), and a ``systemctl`` that only records what it was
  asked in ``systemctl.log`` (the lockdown's ``sudo systemctl disable --now ssh...`` must not
  reach the test machine's own services);
- ``DUET_IMDS_URL`` names the fake IMDS (``tests/fakes/fake_imds.py``), the collection program's
  test seam;
- ``/etc/ssh/`` in a command means the guest's directory, which holds its host key
  (``tests/fakes/guest_shell.py``): the collection program binds the key sshd presents.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

FAKES = Path(__file__).resolve().parent
VTPM_TOOLS = ("nvreadpublic", "nvdefine", "nvwrite", "nvread")
SUDO = """#!/bin/sh
# The fake guest's sudo: its login user may run anything without a password, as on a cloud image.
# The command runs as it is, as the user running the tests (there is no other user to become).
while [ $# -gt 0 ]; do
  case "$1" in
    -n|-E|-H|-S) shift ;;
    --) shift; break ;;
    -*) echo "sudo (fake guest): option $1 is not supported" >&2; exit 1 ;;
    *) break ;;
  esac
done
[ $# -gt 0 ] || { echo "usage: sudo [-n] command" >&2; exit 1; }
exec "$@"
"""
SYSTEMCTL = """#!/bin/sh
# The fake guest's systemctl: records what it was asked, touches no service of the test machine.
echo "$*" >> {log}
"""


@dataclass(frozen=True)
class FakeGuest:
    root: Path
    """The VM's directory: its sshd's files, and what the guest sees as ``/etc/ssh``."""
    platform: Literal["snp", "tdx"]
    vm_unique_id: str
    """What the paravisor writes as ``vm-configuration.vmUniqueId``: the VM's ARM ``vmId``."""
    hardware_dir: Path
    """The SIMULATED AMD and Intel the vTPM's reports come from (shared with the fake IMDS)."""
    imds_url: str
    refresh_s: float = 0.0
    """How long after a write to NV 0x01400002 the HCL report still holds the previous user data."""
    vtpm: bool = True
    """False: a VM that is no Confidential VM with a vTPM; the tpm2 tools find no TPM device."""

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def vtpm_dir(self) -> Path:
        return self.root / "vtpm"

    @property
    def systemctl_log(self) -> Path:
        return self.root / "systemctl.log"

    def install(self) -> FakeGuest:
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.vtpm_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "platform": self.platform,
            "vm_unique_id": self.vm_unique_id,
            "hardware": str(self.hardware_dir),
            "refresh_s": self.refresh_s,
        }
        if self.vtpm:
            (self.vtpm_dir / "vm.json").write_text(json.dumps(config, indent=2) + "\n")
        vtpm = shlex.quote(str(FAKES / "fake_vtpm.py"))
        for tool in VTPM_TOOLS:
            _script(self.bin_dir / f"tpm2_{tool}", f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {vtpm} {tool} "$@"\n')
        _script(self.bin_dir / "sudo", SUDO)
        _script(self.bin_dir / "systemctl", SYSTEMCTL.format(log=shlex.quote(str(self.systemctl_log))))
        return self

    def environment(self) -> dict[str, str]:
        """The sessions' environment (sshd ``SetEnv``)."""
        return {
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/local/bin:/usr/bin:/bin')}",
            "DUET_IMDS_URL": self.imds_url,
            "DUET_FAKE_VTPM": str(self.vtpm_dir),
        }

    def force_command(self) -> str:
        """Every session through the guest's view of ``/etc/ssh`` (sshd ``ForceCommand``)."""
        return shlex.join([sys.executable, "-I", str(FAKES / "guest_shell.py"), str(self.root)])


def _script(path: Path, text: str) -> None:
    path.write_text(text)
    path.chmod(0o755)
