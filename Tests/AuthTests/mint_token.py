#!/usr/bin/env python3
"""Mints an RFC 9068 access token with PyJWT, a second JWT implementation, so the Swift
verifier is checked against tokens it did not produce itself (security.md §7.5).

Usage: mint_token.py KEY_PEM ALG KID ISSUER AUDIENCE CLIENT_ID NOW
Prints the token on stdout. NOW is the Unix time the test's clock reads.
"""
import sys

import jwt
from cryptography.hazmat.primitives.serialization import load_pem_private_key


def main() -> int:
    if len(sys.argv) != 8:
        print(__doc__, file=sys.stderr)
        return 2
    key_file, alg, kid, issuer, audience, client_id, now = sys.argv[1:]
    now = int(now)
    with open(key_file, "rb") as handle:
        key = load_pem_private_key(handle.read(), password=None)
    claims = {
        "iss": issuer,
        "aud": audience,
        "client_id": client_id,
        "sub": client_id,
        "scope": "events:write",
        "iat": now - 5,
        "exp": now + 300,
        "jti": "pyjwt-%s-%d" % (alg, now),
    }
    token = jwt.encode(claims, key, algorithm=alg, headers={"kid": kid, "typ": "at+jwt"})
    print(token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
