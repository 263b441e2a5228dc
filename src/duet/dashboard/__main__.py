"""``python -m duet.dashboard export DIR``: the dashboard as static files, to host anywhere
(next to the published tiles in a bucket, say); see docs/dashboard.md."""

from __future__ import annotations

import sys
from pathlib import Path

from duet.dashboard import export


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] != "export":
        print("usage: python -m duet.dashboard export DIR", file=sys.stderr)
        return 2
    for path in export(Path(argv[1])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
