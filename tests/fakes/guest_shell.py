"""The fake cloud VM's view of its own file system: every SSH session of the fake guest runs
through this program (sshd ``ForceCommand``, set by ``tests/fakes/fake_guest.py``).

The fake guest is an sshd on the test machine, so its ``/`` is the test machine's. What the
controller's commands read of the guest's SSH configuration must be the fake guest's, not the
test machine's: the collection program (``duet/guest/collect_evidence.py``) reads the host key
sshd presents at ``/etc/ssh/ssh_host_ed25519_key.pub``, as on every cloud image. So each command
runs with ``/etc/ssh/``, where it begins a shell word, replaced by the fake guest's own directory
(which holds its host key and its sshd_config); nothing else is changed, and the command runs in
the login shell as sshd would run it.

Run as ``python guest_shell.py GUEST_ETC_SSH_DIR``; the command is sshd's ``SSH_ORIGINAL_COMMAND``.
Standard library only.
"""

from __future__ import annotations

import os
import re
import sys

GUEST_ETC_SSH = re.compile(r"(?<![^\s'\"=])/etc/ssh/")
"""``/etc/ssh/`` at the start of a shell word (after a blank, a quote or ``=``)."""


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not re.fullmatch(r"[A-Za-z0-9_./+-]+", argv[1]):
        print("guest_shell: usage: guest_shell.py GUEST_ETC_SSH_DIR (a path with no shell metacharacters)", file=sys.stderr)
        return 2
    etc_ssh = argv[1].rstrip("/") + "/"
    shell = os.environ.get("SHELL") or "/bin/sh"
    command = os.environ.get("SSH_ORIGINAL_COMMAND")
    if command is None:  # an interactive session: the login shell, as sshd starts it
        os.execv(shell, ["-" + os.path.basename(shell)])
    os.execv(shell, [shell, "-c", GUEST_ETC_SSH.sub(lambda _m: etc_ssh, command)])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv))
