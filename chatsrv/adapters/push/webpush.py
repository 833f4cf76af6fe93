"""Web Push message encryption (RFC 8291 over RFC 8188 `aes128gcm`) and VAPID (RFC 8292).

Pure functions over `cryptography` and pyjwt, no I/O: `encrypt` builds the body of one
push request for one subscription; `VapidKey.authorization` the `Authorization` header.
Checked against the worked example of RFC 8291 §5 / Appendix A (tests/unit/test_webpush.py).
"""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

P256_POINT_BYTES = 65  # uncompressed: 0x04 || X || Y
AUTH_SECRET_BYTES = 16
RECORD_SIZE = 4096  # one record; push services take at most 4096 bytes of body
# header: salt(16) rs(4) idlen(1) keyid(65); each record carries a 16-byte tag and >= 1
# padding delimiter byte
MAX_PLAINTEXT = RECORD_SIZE - 16 - 1 - (16 + 4 + 1 + P256_POINT_BYTES)
VAPID_TTL = 12 * 3600  # RFC 8292 §2: exp no more than 24 h ahead


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    """Raises ValueError for anything but base64url (padding optional)."""
    if not isinstance(text, str) or not text.isascii():
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, TypeError) as exc:
        raise ValueError("not base64url") from exc


def public_point(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.X962,
                            serialization.PublicFormat.UncompressedPoint)


def load_point(raw: bytes) -> ec.EllipticCurvePublicKey:
    """An uncompressed P-256 point; ValueError if it is not one (wrong length, off-curve)."""
    if len(raw) != P256_POINT_BYTES or raw[0] != 4:
        raise ValueError("not an uncompressed P-256 point")
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)


def _hkdf(salt: bytes, ikm: bytes, info: bytes, length: int) -> bytes:
    return HKDF(hashes.SHA256(), length, salt, info).derive(ikm)


def encrypt(plaintext: bytes, *, ua_public: bytes, auth_secret: bytes,
            salt: bytes | None = None,
            as_private: ec.EllipticCurvePrivateKey | None = None) -> bytes:
    """The `aes128gcm` body for one subscription (p256dh `ua_public`, `auth_secret`): one
    record, padded with the delimiter only. `salt` and `as_private` (the ephemeral sender
    key) are fresh per message; tests pass the RFC's. Raises ValueError for a bad key or a
    plaintext over MAX_PLAINTEXT bytes."""
    if len(plaintext) > MAX_PLAINTEXT:
        raise ValueError(f"push payload over {MAX_PLAINTEXT} bytes")
    receiver = load_point(ua_public)
    salt = os.urandom(16) if salt is None else salt
    as_private = ec.generate_private_key(ec.SECP256R1()) if as_private is None else as_private
    as_public = public_point(as_private.public_key())
    shared = as_private.exchange(ec.ECDH(), receiver)
    # RFC 8291 §3.4: IKM from the ECDH secret and the auth secret, bound to both keys
    ikm = _hkdf(auth_secret, shared, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    # RFC 8188 §2: the last (only) record ends with delimiter 0x02
    record = AESGCM(cek).encrypt(nonce, plaintext + b"\x02", None)
    header = salt + RECORD_SIZE.to_bytes(4, "big") + bytes([len(as_public)]) + as_public
    return header + record


def decrypt(body: bytes, *, ua_private: ec.EllipticCurvePrivateKey, auth_secret: bytes) -> bytes:
    """The receiver's side (a browser's): for the test push service. Raises ValueError or
    cryptography's InvalidTag."""
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    as_public = body[21:21 + idlen]
    records = body[21 + idlen:]
    if rs < 18 or len(records) > rs:
        raise ValueError("one record expected")
    ua_public = public_point(ua_private.public_key())
    shared = ua_private.exchange(ec.ECDH(), load_point(as_public))
    ikm = _hkdf(auth_secret, shared, b"WebPush: info\x00" + ua_public + as_public, 32)
    cek = _hkdf(salt, ikm, b"Content-Encoding: aes128gcm\x00", 16)
    nonce = _hkdf(salt, ikm, b"Content-Encoding: nonce\x00", 12)
    padded = AESGCM(cek).decrypt(nonce, records, None).rstrip(b"\x00")
    if not padded.endswith(b"\x02"):
        raise ValueError("not the last record")
    return padded[:-1]


def origin(endpoint: str) -> str:
    """`aud` of the VAPID token: scheme://host[:port] of the push endpoint."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class VapidKey:
    """The application server's key pair (RFC 8292); `public_key` is what browsers pass as
    `applicationServerKey` (base64url uncompressed point)."""

    private: ec.EllipticCurvePrivateKey
    subject: str

    @property
    def public_key(self) -> str:
        return b64url(public_point(self.private.public_key()))

    def authorization(self, endpoint: str, *, now: float | None = None,
                      ttl: int = VAPID_TTL) -> str:
        """`vapid t=<ES256 JWT>, k=<public key>` for a request to `endpoint`."""
        issued = int(time.time() if now is None else now)
        token = jwt.encode({"aud": origin(endpoint), "exp": issued + ttl, "sub": self.subject},
                           self.private, algorithm="ES256")
        return f"vapid t={token}, k={self.public_key}"

    @classmethod
    def from_text(cls, text: str, subject: str) -> VapidKey:
        """A PEM private key, or the raw 32-byte scalar base64url-encoded (what `web-push
        generate-vapid-keys` prints). Raises ValueError."""
        text = text.strip()
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey) or \
                    not isinstance(key.curve, ec.SECP256R1):
                raise ValueError("not a P-256 private key")
            return cls(key, subject)
        raw = b64url_decode(text)
        if len(raw) != 32:
            raise ValueError("a raw VAPID private key is 32 bytes")
        return cls(ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1()), subject)

    @classmethod
    def load_or_create(cls, path: Path, subject: str) -> VapidKey:
        """The key kept at `path` (PEM, mode 0600), generated there on first use. Blocking
        file I/O: call before the event loop starts or in a thread."""
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption())
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process made it first: use theirs
            else:
                with os.fdopen(fd, "wb") as f:
                    f.write(pem)
        return cls.from_text(path.read_text(), subject)
