"""Encryption at rest for ERP credentials (Fernet: AES-128-CBC + HMAC-SHA256).

``ENCRYPTION_KEY`` may hold several comma-separated keys: the first encrypts, all decrypt,
so a key can be rotated without losing what was stored under the old one.
"""

from __future__ import annotations

import orjson
from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class CryptoError(Exception):
    pass


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")


class Box:
    def __init__(self, keys: str) -> None:
        parts = [k.strip() for k in keys.split(",") if k.strip()]
        if not parts:
            raise CryptoError("ENCRYPTION_KEY is empty; generate one with `erp-sync keygen`.")
        try:
            self._fernet = MultiFernet([Fernet(k.encode("ascii")) for k in parts])
        except (ValueError, UnicodeEncodeError):
            raise CryptoError(
                "ENCRYPTION_KEY is not a valid key (32 url-safe base64-encoded bytes); "
                "generate one with `erp-sync keygen`."
            ) from None

    def encrypt_json(self, value: dict[str, object]) -> str:
        return self._fernet.encrypt(orjson.dumps(value)).decode("ascii")

    def decrypt_json(self, token: str) -> dict[str, object]:
        try:
            data = orjson.loads(self._fernet.decrypt(token.encode("ascii")))
        except InvalidToken:
            raise CryptoError(
                "stored credentials cannot be decrypted with ENCRYPTION_KEY; "
                "restore the key they were written with (keep old keys after a comma)."
            ) from None
        if not isinstance(data, dict):
            raise CryptoError("stored credentials are not an object")
        return data

    def rotate(self, token: str) -> str:
        """Re-encrypt under the first key."""
        return self._fernet.rotate(token.encode("ascii")).decode("ascii")
