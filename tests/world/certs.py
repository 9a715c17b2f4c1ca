"""A throwaway CA and the world's HTTPS certificate, made with the openssl CLI.

P-256 keys (generation takes milliseconds), valid for two days; the CA is
made fresh for every test run, so nothing trusts it afterwards.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .addresses import CERT_DNS_NAMES, WORLD_V4, WORLD_V6

OPENSSL_TIMEOUT = 30


@dataclass(frozen=True)
class Pki:
    ca_file: Path  # world-readable: clients (the test user too) verify with it
    cert_file: Path
    key_file: Path  # root only: worldd runs as root


def _openssl(*args: str, cwd: Path) -> None:
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True,
                            timeout=OPENSSL_TIMEOUT, stdin=subprocess.DEVNULL)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {result.stderr.strip()}")


def make_pki(directory: Path, label: str) -> Pki:
    directory.mkdir(mode=0o755, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", f"/CN=netwrap test world CA {label}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    _openssl("req", "-new", *ec, "-keyout", "server.key", "-out", "server.csr",
             "-subj", f"/CN={CERT_DNS_NAMES[0]}", cwd=directory)
    sans = ",".join([f"DNS:{name}" for name in CERT_DNS_NAMES] + [f"IP:{WORLD_V4}", f"IP:{WORLD_V6}"])
    (directory / "server.ext").write_text(
        f"subjectAltName={sans}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n"
    )
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
             "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "2",
             "-extfile", "server.ext", "-out", "server.pem", cwd=directory)
    for name in ("ca.key", "server.key"):
        os.chmod(directory / name, 0o600)
    for name in ("ca.pem", "server.pem"):
        os.chmod(directory / name, 0o644)
    return Pki(directory / "ca.pem", directory / "server.pem", directory / "server.key")
