"""``python -m aion.core.mkcerts DIR IDENTITY...``: a new CA and a certificate per identity.

For the local suite (``python -m aion.infra.devstack``, the e2e tests), which
runs it as a command (aion-infra does not depend on aion-core) in the services'
Python and points each process's ``AION_TLS_*`` at the files. Writes
``DIR/ca.crt``, ``DIR/ca.key`` and ``DIR/<identity>.crt``, ``DIR/<identity>.key``
(keys readable by the owner only).
"""

from __future__ import annotations

import sys
from pathlib import Path

from aion.core import pki


def write(directory: Path, identities: list[str]) -> None:
    """A fresh CA under ``directory`` and one certificate per identity."""
    ca = pki.new_ca("aion local CA")
    ca.write(directory / "ca.crt", directory / "ca.key")
    for identity in identities:
        pki.issue(ca, identity).write(directory / f"{identity}.crt", directory / f"{identity}.key")


def main(argv: list[str]) -> int:
    """Entry point; exit status 2 on a usage error."""
    if len(argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        write(Path(argv[0]), argv[1:])
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
