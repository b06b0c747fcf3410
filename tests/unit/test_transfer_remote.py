"""Delivery of a signed transfer Bundle: retries, timeouts, signatures and acknowledgements."""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import pytest
import requests
import responses
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ehcp_record.audit import signing
from ehcp_record.config import Settings
from ehcp_record.errors import FhirError
from ehcp_record.transfer.remote import (CONNECT_TIMEOUT, READ_TIMEOUT, DeliveryFailed, Peer, already_received, check_signature, deliver, delivery_session,
                                         encode_bundle, make_ack, signed_headers, verify_ack)

RECEIVER_URL = "https://ehcp.la-916.example/fhir"
NOW = datetime(2026, 11, 22, 12, 0, tzinfo=timezone.utc)


@pytest.fixture()
def keys():
    return Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()


@pytest.fixture()
def signed(keys):
    sender, _ = keys
    body = encode_bundle({"resourceType": "Bundle", "id": "t1", "type": "collection", "entry": []})
    return body, signed_headers(body, sender, "t1")


def _ack(receiver_key, body: bytes) -> dict:
    return make_ack(receiver_key, "t1", hashlib.sha256(body).hexdigest(), "Organization/la-916", NOW)


def _peer(receiver_key) -> Peer:
    return Peer("Organization/la-916", RECEIVER_URL, receiver_key.public_key())


def _fast_session():
    return delivery_session(retries=3, backoff=0)


@responses.activate
def test_5xx_then_success_is_one_delivery(keys, signed):
    _, receiver = keys
    body, headers = signed
    url = f"{RECEIVER_URL}/$receive-transfer"
    responses.add(responses.POST, url, status=503)
    responses.add(responses.POST, url, status=502)
    responses.add(responses.POST, url, json=_ack(receiver, body), status=201)
    ack = deliver(_peer(receiver), body, headers, _fast_session())
    assert verify_ack(receiver.public_key(), ack, hashlib.sha256(body).hexdigest())
    assert len(responses.calls) == 3
    assert all(c.request.headers["Idempotency-Key"] == "t1" for c in responses.calls)
    assert responses.calls[0].request.req_kwargs["timeout"] == (CONNECT_TIMEOUT, READ_TIMEOUT)


@responses.activate
def test_500_is_retried_too(keys, signed):
    _, receiver = keys
    body, headers = signed
    url = f"{RECEIVER_URL}/$receive-transfer"
    responses.add(responses.POST, url, status=500)
    responses.add(responses.POST, url, json=_ack(receiver, body), status=200)
    assert deliver(_peer(receiver), body, headers, _fast_session())["resourceType"] == "Parameters"
    assert len(responses.calls) == 2


@responses.activate
def test_5xx_every_time_gives_up_after_the_retries(keys, signed):
    _, receiver = keys
    body, headers = signed
    responses.add(responses.POST, f"{RECEIVER_URL}/$receive-transfer", status=503)
    with pytest.raises(DeliveryFailed, match="503"):
        deliver(_peer(receiver), body, headers, _fast_session())
    assert len(responses.calls) == 4  # the first attempt and three retries


@responses.activate
def test_receiver_down_raises_and_says_why(keys, signed):
    _, receiver = keys
    body, headers = signed
    responses.add(responses.POST, f"{RECEIVER_URL}/$receive-transfer", body=requests.ConnectionError("refused"))
    with pytest.raises(DeliveryFailed, match="could not be reached"):
        deliver(_peer(receiver), body, headers, _fast_session())


@responses.activate
def test_timeout_is_a_failed_delivery(keys, signed):
    _, receiver = keys
    body, headers = signed
    responses.add(responses.POST, f"{RECEIVER_URL}/$receive-transfer", body=requests.Timeout("slow"))
    with pytest.raises(DeliveryFailed):
        deliver(_peer(receiver), body, headers, _fast_session())


@responses.activate
def test_refusal_is_not_retried_forever(keys, signed):
    _, receiver = keys
    body, headers = signed
    responses.add(responses.POST, f"{RECEIVER_URL}/$receive-transfer", status=422, json={"resourceType": "OperationOutcome"})
    with pytest.raises(DeliveryFailed, match="422"):
        deliver(_peer(receiver), body, headers, _fast_session())
    assert len(responses.calls) == 1


@responses.activate
def test_acknowledgement_signed_by_someone_else_is_refused(keys, signed):
    _, receiver = keys
    body, headers = signed
    impostor = Ed25519PrivateKey.generate()
    responses.add(responses.POST, f"{RECEIVER_URL}/$receive-transfer", json=_ack(impostor, body), status=201)
    with pytest.raises(DeliveryFailed, match="acknowledgement"):
        deliver(_peer(receiver), body, headers, _fast_session())


@responses.activate
def test_acknowledgement_of_other_bytes_is_refused(keys, signed):
    _, receiver = keys
    body, headers = signed
    responses.add(responses.POST, f"{RECEIVER_URL}/$receive-transfer", json=_ack(receiver, body + b" "), status=201)
    with pytest.raises(DeliveryFailed):
        deliver(_peer(receiver), body, headers, _fast_session())


def test_receiver_checks_signature_against_trust_list(keys, signed):
    sender, _ = keys
    body, headers = signed
    trust = ({"organization": "Organization/la-866", "base_url": "https://ehcp.la-866.example/fhir",
              "public_key": signing.public_key_pem(sender)},)
    settings = Settings(trust_list=trust)
    assert check_signature(settings, body, headers).organization == "Organization/la-866"
    tampered = body.replace(b'"t1"', b'"t2"')
    with pytest.raises(FhirError) as refused:
        check_signature(settings, tampered, headers)
    assert refused.value.status == 403
    with pytest.raises(FhirError):
        check_signature(Settings(trust_list=()), body, headers)


@responses.activate
def test_receiver_holding_an_earlier_bundle_of_the_transfer_is_believed_only_for_a_bundle_sent(keys, signed):
    _, receiver = keys
    body, headers = signed
    earlier = encode_bundle({"resourceType": "Bundle", "id": "t1", "type": "collection", "entry": [], "timestamp": "2026-01-01"})
    earlier_sha = hashlib.sha256(earlier).hexdigest()
    held = make_ack(receiver, "t1", earlier_sha, "Organization/la-916", NOW)
    url = f"{RECEIVER_URL}/$receive-transfer"
    responses.add(responses.POST, url, json=already_received(held), status=409)
    ack = deliver(_peer(receiver), body, headers, _fast_session(), earlier={earlier_sha})
    assert verify_ack(receiver.public_key(), ack, earlier_sha)
    with pytest.raises(DeliveryFailed, match="409"):
        deliver(_peer(receiver), body, headers, _fast_session(), earlier=set())  # never sent: not believed
    forged = make_ack(Ed25519PrivateKey.generate(), "t1", earlier_sha, "Organization/la-916", NOW)
    responses.replace(responses.POST, url, json=already_received(forged), status=409)
    with pytest.raises(DeliveryFailed, match="409"):
        deliver(_peer(receiver), body, headers, _fast_session(), earlier={earlier_sha})


@responses.activate
def test_acknowledgement_that_is_not_json_is_a_failed_delivery(keys, signed):
    _, receiver = keys
    body, headers = signed
    responses.add(responses.POST, f"{RECEIVER_URL}/$receive-transfer", body="ok", status=201)
    with pytest.raises(DeliveryFailed, match="not JSON"):
        deliver(_peer(receiver), body, headers, _fast_session())


def test_signed_headers_carry_the_idempotency_key_and_verify(keys, signed):
    sender, _ = keys
    body, headers = signed
    assert headers["Idempotency-Key"] == "t1"
    assert signing.verify(sender.public_key(), body, headers["X-EHCP-Signature"])
    assert headers["X-EHCP-Key-Id"] == signing.key_id(sender.public_key())
