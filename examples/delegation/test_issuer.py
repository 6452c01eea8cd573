#!/usr/bin/env python3
"""A TEST OpenID issuer for trying delegation without an identity provider.

Writes into the directory given (default: the current one):
  idp.jwks.json   the issuer's public key set (the service reads it: ztinfra.toml)
  alice.jwt       an ID token for the user `alice`, audience `ztinfra-console`, valid 10 minutes
The key is a test key made on the spot and then forgotten: never trust this issuer for anything
real. With a real provider, point `jwks_uri` at its JWKS instead (its discovery document's
`jwks_uri`) and give the service the user's ID token. Needs `cryptography` and `PyJWT`.
"""

import json
import sys
import time
from pathlib import Path

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

ISSUER = "https://idp.test.example"

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
key = ec.generate_private_key(ec.SECP256R1())
jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
jwk.update({"kid": "test-key-1", "alg": "ES256", "use": "sig"})
(out / "idp.jwks.json").write_text(json.dumps({"keys": [jwk]}, indent=2) + "\n")
now = int(time.time())
claims = {"iss": ISSUER, "sub": "alice", "aud": "ztinfra-console", "iat": now, "exp": now + 600}
(out / "alice.jwt").write_text(jwt.encode(claims, key, algorithm="ES256", headers={"kid": "test-key-1"}) + "\n")
print(f"test issuer {ISSUER}: idp.jwks.json, and alice.jwt (valid 10 minutes)")
