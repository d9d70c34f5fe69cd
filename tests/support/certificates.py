"""Certificates made in the test: an authority, a server certificate for 127.0.0.1 and a client
certificate it signs (PEM files), for the TLS tests."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import pytest


def certificates(folder: Path) -> dict[str, Path]:
    """A certificate authority, a server certificate for 127.0.0.1 and a client certificate it signs."""
    crypto = pytest.importorskip("cryptography")  # noqa: F841
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def make(name: str, issuer: tuple | None, ca: bool, san: bool) -> tuple:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        builder = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(issuer[0].subject if issuer else subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san:
            builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
        return cert, key

    ca = make("poolkit test CA", None, True, False)
    server = make("127.0.0.1", ca, False, True)
    client = make("client", ca, False, False)
    files = {}
    for name, (cert, key) in {"ca": ca, "server": server, "client": client}.items():
        files[f"{name}.crt"] = folder / f"{name}.crt"
        files[f"{name}.crt"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        files[f"{name}.key"] = folder / f"{name}.key"
        files[f"{name}.key"].write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return files
