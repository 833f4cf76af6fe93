"""RFC 8291 encryption against the RFC's worked example, VAPID tokens, back-off, summaries."""

from __future__ import annotations

import random
import time
from datetime import UTC, datetime
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from chatsrv.adapters.push.webpush import (
    MAX_PLAINTEXT,
    VapidKey,
    b64url,
    b64url_decode,
    decrypt,
    encrypt,
    load_point,
)
from chatsrv.domain.push import PushItem, backoff, summary

# RFC 8291 §5 (Appendix A): the example message, keys and salt, and the body they make
PLAINTEXT = b"When I grow up, I want to be a watermelon"
AS_PRIVATE = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
UA_PRIVATE = "q1dXpw3UpT5VOmu_cf_v6ih07Aems3njxI-JWgLcM94"
UA_PUBLIC = ("BCVxsr7N_eNgVRqvHtD0zTZsEc6-VV-JvLexhqUzORcxaOzi6-AYWXvTBHm4bjyPjs7Vd8pZGH6SRpkNto"
             "IAiw4")
AUTH = "BTBZMqHH6r4Tts7J_aSIgg"
SALT = "DGv6ra1nlYgDCS1FRnbzlw"
BODY = ("DGv6ra1nlYgDCS1FRnbzlwAAEABBBP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocIn"
        "mYWAmS6TlzAC8wEqKK6PBru3jl7A_yl95bQpu6cVPTpK4Mqgkf1CXztLVBSt2Ks3oZwbuwXPXLWyouBWLVWG"
        "NWQexSgSxsj_Qulcy4a-fN")


def _key(b64: str) -> ec.EllipticCurvePrivateKey:
    return ec.derive_private_key(int.from_bytes(b64url_decode(b64), "big"), ec.SECP256R1())


def test_encrypt_reproduces_the_rfc_8291_example() -> None:
    body = encrypt(PLAINTEXT, ua_public=b64url_decode(UA_PUBLIC), auth_secret=b64url_decode(AUTH),
                   salt=b64url_decode(SALT), as_private=_key(AS_PRIVATE))
    assert b64url(body) == BODY


def test_the_rfc_example_decrypts_with_the_receiver_key() -> None:
    assert decrypt(b64url_decode(BODY), ua_private=_key(UA_PRIVATE),
                   auth_secret=b64url_decode(AUTH)) == PLAINTEXT


def test_fresh_encryptions_differ_and_round_trip() -> None:
    ua = ec.generate_private_key(ec.SECP256R1())
    from chatsrv.adapters.push.webpush import public_point

    point, auth = public_point(ua.public_key()), b"\x01" * 16
    one, two = (encrypt(b"hi", ua_public=point, auth_secret=auth) for _ in range(2))
    assert one != two  # fresh salt and sender key per message
    assert decrypt(one, ua_private=ua, auth_secret=auth) == b"hi"
    with pytest.raises(ValueError):
        encrypt(b"x" * (MAX_PLAINTEXT + 1), ua_public=point, auth_secret=auth)
    assert len(encrypt(b"x" * MAX_PLAINTEXT, ua_public=point, auth_secret=auth)) <= 4096


@pytest.mark.parametrize("raw", [b"", b"\x04" + b"\x00" * 64, b"\x02" + b"\x01" * 32])
def test_bad_points_are_refused(raw: bytes) -> None:
    with pytest.raises(ValueError):
        load_point(raw)


def test_vapid_token_is_an_es256_jwt_for_the_endpoint_origin(tmp_path: Path) -> None:
    key = VapidKey.load_or_create(tmp_path / "vapid.pem", "mailto:ops@example.com")
    assert (tmp_path / "vapid.pem").stat().st_mode & 0o777 == 0o600
    again = VapidKey.load_or_create(tmp_path / "vapid.pem", "mailto:ops@example.com")
    assert again.public_key == key.public_key  # kept, not regenerated
    header = key.authorization("https://push.example.net:8443/wpush/v2/abc?x=1")
    scheme, _, rest = header.partition(" ")
    params = dict(p.strip().split("=", 1) for p in rest.split(","))
    assert scheme == "vapid" and params["k"] == key.public_key
    claims = jwt.decode(params["t"], load_point(b64url_decode(params["k"])),
                        algorithms=["ES256"], audience="https://push.example.net:8443")
    assert claims["sub"] == "mailto:ops@example.com"
    assert time.time() < claims["exp"] <= time.time() + 24 * 3600


def test_vapid_key_from_the_raw_scalar_or_pem() -> None:
    key = VapidKey.from_text(AS_PRIVATE, "mailto:a@b")
    assert key.public_key == ("BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6"
                              "TlzAC8wEqKK6PBru3jl7A8")
    for bad in ("short", "-----BEGIN PRIVATE KEY-----\nxx\n-----END PRIVATE KEY-----"):
        with pytest.raises(ValueError):
            VapidKey.from_text(bad, "mailto:a@b")


def test_backoff_doubles_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(7)
    waits = [backoff(n, first=1.0, cap=30.0, rng=rng) for n in range(1, 8)]
    for n, wait in enumerate(waits, start=1):
        base = min(30.0, 2.0 ** (n - 1))
        assert 0.5 * base <= wait < 1.5 * base
    assert backoff(3, first=1.0, cap=30.0, retry_after=7.0) == 7.0
    assert backoff(3, first=1.0, cap=30.0, retry_after=10_000.0) == 120.0


def _item(count: int, body: str = "hello") -> PushItem:
    return PushItem(id="i", user_id="u", conversation_id="c", target="t", message_id="m",
                    sender_id="s", sender_name="Ann", body=body, mentioned=False, count=count,
                    version=count, attempts=0, lease="l")


def test_summary_collapses_and_redacts() -> None:
    assert summary(_item(1), redact=False)["body"] == "hello"
    assert summary(_item(3), redact=False)["body"] == "3 new messages · hello"
    assert summary(_item(1), redact=True)["body"] == "New message"
    assert summary(_item(2), redact=True)["body"] == "2 new messages"
    assert len(str(summary(_item(1, "x" * 5000), redact=False)["body"])) == 501


def test_mentions_are_read_when_messages_carry_them() -> None:
    from dataclasses import dataclass

    from chatsrv.domain.model import Message, utcnow
    from chatsrv.services.push import mentions_of

    plain = Message(id="m", conversation_id="c", seq=1, sender_id="s", content="hi",
                    message_type="text", client_msg_id=None, created_at=utcnow())
    assert mentions_of(plain) == ()  # before messages carry `mentions`

    @dataclass(frozen=True)
    class WithMentions:
        mentions: tuple[str, ...]

    assert mentions_of(WithMentions(("u1", "u2"))) == ("u1", "u2")  # type: ignore[arg-type]


@pytest.mark.parametrize("env", [
    {"VAPID_SUBJECT": "admin@example.com"},
    {"VAPID_PRIVATE_KEY": "not-a-key"},
    {"PUSH_WEBHOOK_URL": "ftp://gateway.example/push"},
    {"PUSH_DELAY": "-1"},
])
def test_push_settings_are_checked_at_start(env: dict[str, str]) -> None:
    from chatsrv.config import ConfigError, Settings

    with pytest.raises(ConfigError):
        Settings.from_env(env)


def test_a_configured_vapid_key_is_taken() -> None:
    from chatsrv.config import Settings

    s = Settings.from_env({"VAPID_PRIVATE_KEY": AS_PRIVATE, "VAPID_SUBJECT": "https://chat.example"})
    assert VapidKey.from_text(s.vapid_private_key, s.vapid_subject).public_key.startswith("BP4z")
    assert s.masked()["vapid_private_key"] == "***"


@pytest.mark.parametrize("p256dh, auth", [("k", "a"), ("not base64!", "AAAAAAAAAAAAAAAAAAAAAA")])
async def test_a_subscription_whose_keys_cannot_encrypt_is_gone_not_a_crash(
        tmp_path: Path, p256dh: str, auth: str) -> None:
    import httpx

    from chatsrv.adapters.push.http import PushHttp
    from chatsrv.domain.push import PushSubscription

    key = VapidKey.load_or_create(tmp_path / "vapid.pem", "mailto:ops@example.com")
    sub = PushSubscription(id="s", user_id="u", endpoint="https://push.example/x",
                           p256dh=p256dh, auth=auth, created_at=datetime.now(UTC))
    async with httpx.AsyncClient() as client:  # never used: nothing can be encrypted
        outcome = await PushHttp(client, key).web_push(sub, {"a": 1}, topic="t", ttl=60,
                                                       urgency="normal")
    assert outcome.kind == "gone" and "unusable" in outcome.detail
