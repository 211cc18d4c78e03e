#!/usr/bin/env python3
"""An independent RFC 6962 / RFC 9162 inclusion-proof checker for `callgate audit prove`.

Written from the RFCs with Python's standard library only, so the gateway's own Rust code is
not checking itself. Usage: rfc6962_verify.py '<prove JSON>'. Exit 0 when:
  - the record, re-encoded canonically (RFC 8785 for these values: sorted keys, no
    whitespace), hashes to leaf_hash = SHA-256(0x00 || record),
  - the proof leads from leaf_hash at leaf_index to the root in the checkpoint (RFC 9162
    section 2.1.3.2), and the checkpoint's tree size is tree_size.
The checkpoint's signature is checked elsewhere (any signed-note verifier).
"""
import base64
import hashlib
import json
import sys


def canonical(value):
    # Integers and strings only in these records' numbers/keys; sort_keys orders by code
    # point, which equals RFC 8785's UTF-16 order for the ASCII keys Callgate writes.
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def node(left, right):
    return hashlib.sha256(b"\x01" + left + right).digest()


def root_from_proof(index, size, leaf, proof):
    if index >= size:
        raise ValueError("index outside the tree")
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            raise ValueError("proof too long")
        if fn & 1 or fn == sn:
            r = node(p, r)
            if not fn & 1:
                while fn & 1 == 0 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ValueError("proof too short")
    return r


def main():
    doc = json.loads(sys.argv[1])
    record = canonical(doc["record"])
    leaf = hashlib.sha256(b"\x00" + record).digest()
    if base64.b64decode(doc["leaf_hash"]) != leaf:
        print("record does not match leaf_hash")
        return 1
    lines = doc["checkpoint"].split("\n")
    size, root = int(lines[1]), base64.b64decode(lines[2])
    if size != doc["tree_size"]:
        print("tree_size does not match the checkpoint")
        return 1
    proof = [base64.b64decode(p) for p in doc["proof"]]
    try:
        got = root_from_proof(doc["leaf_index"], size, leaf, proof)
    except ValueError as e:
        print(e)
        return 1
    if got != root:
        print("proof does not lead to the checkpoint root")
        return 1
    print("inclusion verified")
    return 0


if __name__ == "__main__":
    sys.exit(main())
