"""Signed impression ids: `<nonce>.<tag>`, tag = HMAC-SHA256(secret, nonce) cut to 128 bits.

Feedback names the impression it belongs to; the signature lets the service refuse, before touching the log store,
clicks for impressions it never served (a guessed or made-up id), and the random nonce keeps ids unguessable.
"""
from __future__ import annotations

import hashlib
import hmac
import re
import secrets

NONCE_BYTES = 16  # 128 random bits: ids never repeat and cannot be guessed
TAG_HEX = 32  # 128 bits of the HMAC: forging one takes ~2**128 tries
ID_PATTERN = re.compile(rf"^[0-9a-f]{{{2 * NONCE_BYTES}}}\.[0-9a-f]{{{TAG_HEX}}}$")


class ImpressionSigner:
    def __init__(self, secret: bytes):
        self._secret = secret

    def _tag(self, nonce: str) -> str:
        """hmac.digest: the one-shot C implementation (several times cheaper than an `hmac.new` object); every
        /recommend signs an id and every click checks one."""
        return hmac.digest(self._secret, nonce.encode(), hashlib.sha256).hex()[:TAG_HEX]

    def new_id(self) -> str:
        nonce = secrets.token_hex(NONCE_BYTES)
        return f"{nonce}.{self._tag(nonce)}"

    def valid(self, impression_id: str) -> bool:
        """True when this service (this secret) made the id; constant-time in the tag."""
        nonce, _, tag = impression_id.partition(".")
        return hmac.compare_digest(tag, self._tag(nonce))


def token_matches(expected: str | None, given: str | None) -> bool:
    """Constant-time token check; nothing matches when no token is configured."""
    return expected is not None and given is not None and hmac.compare_digest(expected.encode(), given.encode())
