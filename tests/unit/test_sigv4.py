"""SigV4 against the worked examples of the AWS S3 documentation ("Signature Calculations
for the Authorization Header" and "Authenticating Requests: Using Query Parameters")."""

from __future__ import annotations

from datetime import UTC, datetime

from chatsrv.adapters.blobs.s3 import EMPTY_SHA256, SigV4

SIGNER = SigV4(access_key="AKIAIOSFODNN7EXAMPLE",
               secret_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY", region="us-east-1")
WHEN = datetime(2013, 5, 24, tzinfo=UTC)


def test_get_object_header_signature() -> None:
    headers = SIGNER.sign_headers("GET", "examplebucket.s3.amazonaws.com", "/test.txt", {},
                                  payload_sha256=EMPTY_SHA256, now=WHEN,
                                  extra={"range": "bytes=0-9"})
    assert headers["authorization"] == (
        "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, "
        "SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, "
        "Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41")


def test_presigned_get_signature() -> None:
    query = SIGNER.presign("GET", "examplebucket.s3.amazonaws.com", "/test.txt", {},
                           expires=86400, now=WHEN)
    assert query["X-Amz-Signature"] == (
        "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404")
