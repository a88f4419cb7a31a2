"""The local cluster's certificates: one CA, and certificates it signs with openssl.

Each certificate is `<name>.crt` with its key `<name>.key` in one folder. The
certificate is written under a temporary name and renamed last, so a file that
exists is complete.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from aion.infra.process import run

CLIENT = "extendedKeyUsage=clientAuth\nkeyUsage=critical,digitalSignature,keyEncipherment\n"


def server_ext(sans: list[str]) -> str:
    """The extensions of a serving certificate for `sans` (`IP:…`, `DNS:…`)."""
    return (
        f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
    )


def ensure_ca(pki: Path, log: Path) -> None:
    """Make ca.crt/ca.key unless they exist."""
    if (pki / "ca.crt").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    run(
        [
            "openssl", "req", "-x509", "-new", "-nodes", "-newkey", "rsa:2048", "-days", "3650",
            "-keyout", str(pki / "ca.key"), "-out", str(pki / "ca.crt.tmp"),
            "-subj", "/CN=aion-local-ca",
        ],
        log=log,
    )  # fmt: skip
    (pki / "ca.crt.tmp").replace(pki / "ca.crt")


def issue(pki: Path, name: str, subject: str, ext: str, log: Path) -> None:
    """Sign `<name>.crt` (subject like `/O=group/CN=user`) with the CA, replacing any."""
    ext_file = pki / f"{name}.ext"
    ext_file.write_text(ext)
    csr = pki / f"{name}.csr"
    run(
        [
            "openssl", "req", "-new", "-nodes", "-newkey", "rsa:2048",
            "-keyout", str(pki / f"{name}.key"), "-out", str(csr), "-subj", subject,
        ],
        log=log,
    )  # fmt: skip
    run(
        [
            "openssl", "x509", "-req", "-in", str(csr), "-CA", str(pki / "ca.crt"),
            "-CAkey", str(pki / "ca.key"), "-CAcreateserial", "-days", "3650",
            "-extfile", str(ext_file), "-out", str(pki / f"{name}.crt.tmp"),
        ],
        log=log,
    )  # fmt: skip
    (pki / f"{name}.key").chmod(0o600)
    (pki / f"{name}.crt.tmp").replace(pki / f"{name}.crt")


def has_san(cert: Path, san: str) -> bool:
    """Whether `cert` exists and names `san` (as openssl prints it: `IP Address:…`)."""
    if not cert.exists():
        return False
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-ext", "subjectAltName", "-in", str(cert)],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return san in out
