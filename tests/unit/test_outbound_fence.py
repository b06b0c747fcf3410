"""The outbound fence (ehcp_record/net/outbound.py): which destinations are refused, that the
refusal comes before any socket is opened, that the check is on the address actually connected
to (DNS rebinding), and that redirects are not followed.

No real network and no real DNS: names resolve only through the session's test resolver
(tests/conftest.py) and `names` below; the only server is a 127.0.0.1 one started here.
"""

from __future__ import annotations

import ipaddress
import socket
import time

import pytest
from hypothesis import given, strategies as st
from urllib3.util.retry import Retry

from ehcp_record.config import ConfigError, load_settings
from ehcp_record.identity import remote
from ehcp_record.net.outbound import Fence, OutboundRefused, literal_address
from ehcp_record.transfer.remote import DeliveryFailed, Peer, deliver, delivery_session
from tests.conftest import TEST_NAMES
from tests import net_support

LOOPBACK = Fence((ipaddress.ip_network("127.0.0.1/32"),))  # what the tests allow
hook = net_support.hook  # the 127.0.0.1 subscriber (module fixture)

REFUSED = [
    ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
    ("http://10.0.0.1/", "10.0.0.1 is a private address"),
    ("http://[::ffff:10.0.0.1]/", "IPv4-in-IPv6 form of 10.0.0.1, a private address"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata"),
    ("http://167772161/", "resolves to 10.0.0.1 is a private address"),
    ("http://012.0.0.1/", "resolves to 10.0.0.1 is a private address"),
    ("http://0x0a000001/", "resolves to 10.0.0.1 is a private address"),
    ("http://2130706433/", "loopback"),  # 127.0.0.1, not allowed by a fence that allows nothing
    ("http://0177.0.0.1/", "loopback"),
    ("http://127.1/", "loopback"),
    ("http://10.0.0.1./", "private"),
    ("http://[::1]/", "loopback"),
    ("http://[fe80::1]/", "link-local"),
    ("http://169.254.10.10/", "link-local"),
    ("http://192.168.1.1/", "private"),
    ("http://172.16.5.4/", "private"),
    ("http://[fc00::1]/", "private"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://0.0.0.0/", "unspecified"),
    ("http://224.0.0.1/", "multicast"),
    ("http://[2002:a00:1::]/", "IPv4-in-IPv6 form of 10.0.0.1"),
    ("http://[64:ff9b::a00:1]/", "IPv4-in-IPv6 form of 10.0.0.1"),
    ("http://internal.test/", "internal.test resolves to 10.20.30.40 is a private address"),
    ("https://metadata.test/", "cloud metadata"),
]


@pytest.fixture()
def names(monkeypatch) -> dict[str, list[str]]:
    """Test-only DNS: these names resolve as given, for this test only."""
    monkeypatch.setitem(TEST_NAMES, "internal.test", ["10.20.30.40"])
    monkeypatch.setitem(TEST_NAMES, "metadata.test", ["169.254.169.254"])
    return TEST_NAMES


@pytest.fixture()
def no_sockets(monkeypatch) -> list:
    """Fail the test if anything connects anywhere; record the attempt."""
    attempts: list = []

    def refuse(self, address, *args, **kwargs):  # noqa: ANN001
        attempts.append(address)
        raise AssertionError(f"a socket was opened to {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda address, *a, **k: refuse(None, address))
    return attempts


@pytest.fixture()
def connections(monkeypatch) -> list:
    """Record every socket connection; anything but 127.0.0.1 fails the test."""
    seen: list = []
    original = socket.socket.connect

    def checked(self, address):  # noqa: ANN001
        seen.append(address)
        assert address[0] == "127.0.0.1", f"a socket was opened to {address}"
        return original(self, address)

    monkeypatch.setattr(socket.socket, "connect", checked)
    return seen



@pytest.mark.parametrize("url, reason", REFUSED)
def test_internal_destinations_are_refused_when_saved(names, no_sockets, url, reason):
    with pytest.raises(OutboundRefused, match=reason.replace("(", r"\(").replace(")", r"\)")):
        Fence().check_url(url)
    assert no_sockets == []


@pytest.mark.parametrize("url, reason", REFUSED)
def test_internal_destinations_are_refused_at_connect_time_before_any_socket(names, no_sockets, url, reason):
    started = time.monotonic()
    session = Fence().session(Retry(total=3, connect=3, backoff_factor=5))  # a refusal is never retried
    with pytest.raises(OutboundRefused) as refused:
        session.post(url, json={"resourceType": "Bundle"}, timeout=2)
    assert reason.split(" is ")[-1].split(",")[0] in str(refused.value)
    assert no_sockets == [] and time.monotonic() - started < 2


def test_a_name_that_resolves_public_when_saved_and_private_when_used_is_refused(monkeypatch, no_sockets):
    """DNS rebinding: the save-time check passes, the connection is still refused."""
    monkeypatch.setitem(TEST_NAMES, "rebind.test", ["8.8.8.8"])  # resolved only, never connected
    Fence().check_url("https://rebind.test/hook")  # public now: accepted (nothing is connected)
    monkeypatch.setitem(TEST_NAMES, "rebind.test", ["10.0.0.7"])
    with pytest.raises(OutboundRefused, match="rebind.test resolves to 10.0.0.7 is a private address"):
        Fence().session().post("https://rebind.test/hook", timeout=2)
    assert no_sockets == []


def test_an_unresolvable_name_is_accepted_when_saved_and_checked_when_used(no_sockets):
    Fence().check_url("https://nowhere.example/hook")
    with pytest.raises(Exception) as failed:
        Fence().session().post("https://nowhere.example/hook", timeout=2)
    assert "nowhere.example" in str(failed.value) and no_sockets == []


def test_an_allowed_address_is_reached_and_a_redirect_is_not_followed(hook, connections):
    base = f"http://127.0.0.1:{hook.server_port}"
    assert LOOPBACK.session().post(base + "/ok", json={}, timeout=5).status_code == 200
    answer = LOOPBACK.session().post(base + "/redirect", json={}, timeout=5)
    assert answer.status_code == 302 and answer.headers["Location"] == "http://10.0.0.1/stolen"
    assert answer.history == [] and hook.hits[-1] == "/redirect"
    assert connections and all(c[0] == "127.0.0.1" for c in connections)


def test_a_name_with_several_addresses_connects_only_to_an_allowed_one(hook, monkeypatch, connections):
    monkeypatch.setitem(TEST_NAMES, "mixed.test", ["10.0.0.1", "127.0.0.1"])
    answer = LOOPBACK.session().post(f"http://mixed.test:{hook.server_port}/ok", json={}, timeout=5)
    assert answer.status_code == 200 and connections == [("127.0.0.1", hook.server_port)]


def test_allowing_a_network_does_not_open_the_metadata_service():
    wide = Fence((ipaddress.ip_network("169.254.0.0/16"),))
    assert wide.refusal(ipaddress.ip_address("169.254.1.1")) is None
    assert "cloud metadata" in wide.refusal(ipaddress.ip_address("169.254.169.254"))
    exact = Fence((ipaddress.ip_network("169.254.169.254/32"),))
    assert exact.refusal(ipaddress.ip_address("169.254.169.254")) is None
    assert Fence().refusal(ipaddress.ip_address("8.8.8.8")) is None
    assert Fence().refusal(ipaddress.ip_address("::ffff:8.8.8.8")) is None  # a public IPv4, mapped


def test_a_transfer_peer_on_an_internal_address_fails_delivery_without_a_socket(no_sockets):
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    peer = Peer("Organization/la-916", "http://10.0.0.9/fhir", Ed25519PrivateKey.generate().public_key())
    with pytest.raises(DeliveryFailed, match="la-916 is not reachable from here: 10.0.0.9 is a private address"):
        deliver(peer, b"{}", {}, delivery_session(retries=3, backoff=5))
    assert no_sockets == []


def test_the_identity_providers_door_is_fenced(no_sockets):
    """Discovery, token endpoint and JWKS fetches (identity.remote) pass the fence too: even a
    configured origin that is (or turns into) a metadata address is never connected to."""
    url = "http://169.254.169.254/jwks.json"
    with pytest.raises(remote.RemoteError, match="cloud metadata"):
        remote.fetch_json(url, allowed=[url], fence=Fence())
    assert no_sockets == []


def test_the_allowance_comes_from_configuration():
    settings = load_settings({"outbound_allow": "127.0.0.1, 10.8.0.0/16"}, environ={})
    fence = Fence.from_settings(settings)
    assert fence.refusal(ipaddress.ip_address("10.8.1.2")) is None
    assert fence.refusal(ipaddress.ip_address("10.9.1.2")) is not None
    assert Fence.from_settings(load_settings({}, environ={})).allowed == ()
    with pytest.raises(ConfigError, match="not an IP address or network"):
        load_settings({"outbound_allow": "intranet"}, environ={})


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_every_numeric_ipv4_spelling_decodes_as_the_c_library_does(value):
    address = ipaddress.IPv4Address(value)
    octets = str(address).split(".")
    for spelling in (str(value), hex(value), ".".join(f"0{int(o):o}" for o in octets), str(address)):
        assert literal_address(spelling) == address, spelling
    assert literal_address(f"{octets[0]}.{value & 0xFFFFFF}") == address


def test_configured_destinations_the_fence_refuses_are_named_at_start_up():
    from ehcp_record.net.outbound import configured_refusals

    settings = load_settings({"trust_list": [{"organization": "Organization/la-916", "base_url": "http://10.0.0.9/fhir",
                                              "public_key": "x"}],
                              "trusted_issuers": [{"iss": "https://idp", "jwks_uri": "http://127.0.0.1:9/jwks"}]},
                             environ={})
    said = configured_refusals(settings)
    assert len(said) == 2 and said[0].startswith("EHCP_TRUST_LIST: http://10.0.0.9/fhir will not be reached")
    assert "EHCP_OUTBOUND_ALLOW" in said[1] and "loopback" in said[1]
    allowed = load_settings({"trusted_issuers": [{"iss": "https://idp", "jwks_uri": "http://127.0.0.1:9/jwks"}],
                             "outbound_allow": "127.0.0.1"}, environ={})
    assert configured_refusals(allowed) == []


def test_the_allowance_is_read_from_the_environment():
    settings = load_settings(environ={"EHCP_OUTBOUND_ALLOW": "127.0.0.1,fd12::/64"})
    assert settings.outbound_allow == ("127.0.0.1", "fd12::/64")
    assert Fence.from_settings(settings).refusal(ipaddress.ip_address("fd12::5")) is None


def test_a_session_made_by_another_library_can_be_fenced(hook, no_sockets):
    """Authlib's OAuth2Session (OIDC discovery, token requests) is a requests.Session: protect()
    fences it the same way."""
    from authlib.integrations.requests_client import OAuth2Session

    session = Fence().protect(OAuth2Session("client"))
    with pytest.raises(OutboundRefused, match="cloud metadata"):
        session.get("http://169.254.169.254/.well-known/openid-configuration", timeout=2, withhold_token=True)
    assert no_sockets == [] and session.max_redirects == 0 and session.trust_env is False
