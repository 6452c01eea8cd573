#!/usr/bin/env python3
"""Mints a TEST SPIFFE trust domain, for trying workload identity without SPIRE.

Writes, into the directory given (default: the current one):
  example.org.bundle.json   the domain's bundle in the SPIFFE format (its CA, and a JWT key)
  agent.crt, agent.key      an X.509-SVID for spiffe://example.org/agents/triage
  gateway.crt, gateway.key  an X.509-SVID for spiffe://example.org/gateway
  agent.jwt                 a JWT-SVID for spiffe://example.org/agents/triage, audience ztinfra,
                            valid 10 minutes
The keys are test keys made on the spot: never use this domain for anything real.
Needs `cryptography` and `PyJWT` (pip install cryptography PyJWT).
"""

import base64
import datetime
import json
import sys
import time
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

NOW = datetime.datetime.now(datetime.timezone.utc)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


class Domain:
    """A test trust domain: a CA, and a key for JWT-SVIDs."""

    def __init__(self, name: str):
        self.name = name
        self.key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} test CA")])
        self.cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self.key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(NOW + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
            )
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"spiffe://{name}")]), False)
            .sign(self.key, hashes.SHA256())
        )
        self.jwt_key = ec.generate_private_key(ec.SECP256R1())

    def svid(self, dir: Path, label: str, uris: list[str], *, ca=False, expired=False, self_signed=False):
        """Writes `<label>.crt` and `<label>.key`; returns their paths."""
        key = ec.generate_private_key(ec.SECP256R1())
        not_after = NOW - datetime.timedelta(minutes=5) if expired else NOW + datetime.timedelta(hours=1)
        subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "test")])
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if self_signed else self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(NOW - datetime.timedelta(hours=1))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        )
        if uris:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.UniformResourceIdentifier(u) for u in uris]), critical=False
            )
        cert = builder.sign(key if self_signed else self.key, hashes.SHA256())
        (dir / f"{label}.crt").write_bytes(pem(cert))
        (dir / f"{label}.key").write_bytes(key_pem(key))
        return dir / f"{label}.crt", dir / f"{label}.key"

    def bundle_json(self) -> str:
        """The domain's bundle in the SPIFFE format: its CA and its JWT key."""
        numbers = self.jwt_key.public_key().public_numbers()
        b64 = lambda n: base64.urlsafe_b64encode(n.to_bytes(32, "big")).rstrip(b"=").decode()
        der = self.cert.public_bytes(serialization.Encoding.DER)
        return json.dumps({
            "spiffe_sequence": 1,
            "keys": [
                {"use": "x509-svid", "kty": "EC", "crv": "P-256", "x5c": [base64.b64encode(der).decode()],
                 "x": b64(self.cert.public_key().public_numbers().x),
                 "y": b64(self.cert.public_key().public_numbers().y)},
                {"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "test-jwt-1",
                 "x": b64(numbers.x), "y": b64(numbers.y)},
            ],
        })

    def jwt_svid(self, sub: str, aud="ztinfra", lifetime=300, kid="test-jwt-1", key=None) -> str:
        claims = {"sub": sub, "aud": aud, "iat": int(time.time())}
        if lifetime is not None:
            claims["exp"] = int(time.time()) + lifetime
        return jwt.encode(claims, key or self.jwt_key, algorithm="ES256", headers={"kid": kid, "typ": "JWT"})


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    out.mkdir(parents=True, exist_ok=True)
    domain = Domain("example.org")
    (out / "example.org.bundle.json").write_text(domain.bundle_json())
    domain.svid(out, "agent", ["spiffe://example.org/agents/triage"])
    domain.svid(out, "gateway", ["spiffe://example.org/gateway"])
    (out / "agent.jwt").write_text(domain.jwt_svid("spiffe://example.org/agents/triage", lifetime=600))
    for key in ("agent.key", "gateway.key"):
        (out / key).chmod(0o600)
    print(f"test trust domain example.org written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
