"""Checks a decision's evidence receipt against the log, as an auditor would: the record the
receipt names holds this decision, its content matches its hash, its inclusion proof leads to a
checkpoint's root, and one of the log's keys signed that checkpoint (Ed25519, a C2SP signed
note). Needs `cryptography` (`pip install './sdk/python[verify]'`) and an auditor's credential.

Give the log's keys from where you trust them (`ztinfra keys export`): keys read from the same
service (`keys=None`) prove only that the service is consistent with itself.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from ._client import Client
from ._model import Decision


class VerificationError(Exception):
    """The receipt does not check out: what failed."""


@dataclass(frozen=True)
class Verified:
    log: str
    seq: int
    tree_size: int
    key_id: str


def verify_receipt(auditor: Client, decision: Decision, keys: Any = None) -> Verified:
    """Verifies `decision`'s receipt through the service `auditor` reads (an auditor's or
    admin's credential), against `keys`: a keyring or a list of keyrings as `ztinfra keys
    export` prints them (JSON text, or parsed). Raises `VerificationError` on any mismatch."""
    receipt = decision.evidence
    if receipt is None:
        raise VerificationError("the decision has no evidence receipt")
    log = quote(receipt.log, safe="")
    found = auditor.get(f"/v1/evidence/{receipt.seq}?log={log}")
    record = found.get("record") if isinstance(found, dict) else None
    if not isinstance(record, dict):
        raise VerificationError(f"record {receipt.seq} could not be read")
    if record.get("decision_id") != decision.decision_id or record.get("decision") != decision.decision:
        raise VerificationError(f"record {receipt.seq} holds another decision")
    content = hashlib.sha256(canonical(record).encode()).digest()
    if content.hex() != receipt.hash:
        raise VerificationError(f"record {receipt.seq}'s content does not match the receipt's hash")
    keyring = _keyring(keys if keys is not None else auditor.get(f"/v1/evidence/keys?log={log}"), receipt.log)
    checkpoint = auditor.get(f"/v1/evidence/checkpoint?log={log}")
    origin, size, root, key_id = _verify_note(str(checkpoint.get("note", "")), keyring)
    if origin != receipt.log:
        raise VerificationError(f"the checkpoint is of log {origin}, not {receipt.log}")
    proof = auditor.get(f"/v1/evidence/{receipt.seq}/proof?size={size}&log={log}")
    if proof.get("record_hash") != receipt.hash:
        raise VerificationError("the proof is for another record")
    try:
        path = [bytes.fromhex(p) for p in proof.get("proof", [])]
    except (TypeError, ValueError):
        raise VerificationError("the proof is not hex") from None
    leaf = hashlib.sha256(b"\x00" + content).digest()
    if root_from_inclusion(receipt.seq, size, leaf, path) != root:
        raise VerificationError("the inclusion proof does not lead to the signed checkpoint's root")
    return Verified(log=receipt.log, seq=receipt.seq, tree_size=size, key_id=key_id)


def canonical(value: Any) -> str:
    """RFC 8785, as the service writes records: members sorted by UTF-16 code units, integers
    only."""
    if isinstance(value, dict):
        members = sorted(value.items(), key=lambda kv: kv[0].encode("utf-16-be"))
        return "{" + ",".join(f"{_string(k)}:{canonical(v)}" for k, v in members) + "}"
    if isinstance(value, list):
        return "[" + ",".join(canonical(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _string(value)
    raise VerificationError(f"the record holds a value a record cannot: {value!r}")


def _string(text: str) -> str:
    # JSON.stringify's escapes: the short forms, \u00xx for other controls, the rest as is.
    return json.dumps(text, ensure_ascii=False)


def root_from_inclusion(index: int, size: int, leaf: bytes, proof: list[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162, 2.1.3.2)."""
    if index >= size:
        raise VerificationError("the record is beyond the checkpoint's tree")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise VerificationError("the inclusion proof is too long")
        if fn & 1 or fn == sn:
            r = hashlib.sha256(b"\x01" + p + r).digest()
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = hashlib.sha256(b"\x01" + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise VerificationError("the inclusion proof is too short")
    return r


def _keyring(keys: Any, origin: str) -> dict[str, Any]:
    if isinstance(keys, (str, bytes)):
        keys = json.loads(keys)
    rings = keys if isinstance(keys, list) else [keys]
    for ring in rings:
        if isinstance(ring, dict) and ring.get("origin") == origin:
            return ring
    raise VerificationError(f"no keys are given for log {origin}")


def _verify_note(note: str, keyring: dict[str, Any]) -> tuple[str, int, bytes, str]:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    body, sep, signatures = note.partition("\n\n")
    if not sep:
        raise VerificationError("the checkpoint note is malformed")
    body += "\n"
    lines = body.rstrip("\n").split("\n")
    if len(lines) < 3:
        raise VerificationError("the checkpoint note is malformed")
    origin, size, root = lines[0], int(lines[1]), base64.b64decode(lines[2])
    for line in filter(None, signatures.split("\n")):
        dash, _, rest = line.partition(" ")
        name, _, blob = rest.partition(" ")
        if dash != "\u2014" or name != origin:
            continue
        signed = base64.b64decode(blob)
        for key in keyring.get("keys", []):
            raw = base64.b64decode(key["public_key"])
            if hashlib.sha256(f"{origin}\n".encode() + b"\x01" + raw).digest()[:4] != signed[:4]:
                continue
            try:
                Ed25519PublicKey.from_public_bytes(raw).verify(signed[4:], body.encode())
            except InvalidSignature:
                raise VerificationError(f"the checkpoint's signature does not verify with key {key.get('key_id')}") from None
            return origin, size, root, str(key.get("key_id", ""))
    raise VerificationError("the checkpoint is not signed by any of the given keys")
