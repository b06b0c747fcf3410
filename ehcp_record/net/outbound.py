"""The outbound fence: every HTTP request the server makes goes through `Fence.session()`.

Subscription endpoints are chosen by any signed-in user, a parent included, so without a fence
the server is a proxy into its own network (server-side request forgery, OWASP ASVS 5.2.6 and
the OWASP SSRF Prevention Cheat Sheet). The fence refuses every destination that is not a
public unicast address: loopback, link-local (169.254.0.0/16, fe80::/10) and the cloud metadata
services on it, private (RFC 1918, fc00::/7), shared CGNAT space (RFC 6598), unspecified,
multicast, reserved and documentation ranges, and IPv4 hidden inside IPv6 (IPv4-mapped, 6to4,
NAT64), unless the operator allows the address or network in EHCP_OUTBOUND_ALLOW.

The check is made where it cannot be dodged: in the urllib3 connection, on the very address
the socket is about to connect to, after resolution (so a name that resolves to a public
address when a Subscription is saved and to 10.0.0.1 when it is delivered, DNS rebinding, is
still refused). Legacy numeric forms (2130706433, 0177.0.0.1, 0x7f000001) are decoded as the C
library would and checked the same way. Redirects are never followed (a 302 to an internal
address would otherwise bypass any check made on the first URL), proxies from the environment
are not used, and a refusal is not retried. `check_url` is the same test at save time, so a
Subscription that can never be delivered is refused with the reason (422) when it is written.

Anything new that fetches from another machine (OIDC discovery, token endpoints) should use
`Fence.from_settings(settings).session()`, or `fence.protect(session)` for a session another
library made (Authlib's OAuth2Session); `fenced_jwk_client` is PyJWT's JWKS client on it.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Union
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.util.retry import Retry

Address = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]
Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

#: instance metadata services (AWS/GCP/Azure/OpenStack, AWS ECS, AWS IPv6, Alibaba): refused
#: even inside an allowed network unless allowed by exact address
METADATA = frozenset(ipaddress.ip_address(a) for a in
                     ("169.254.169.254", "169.254.170.2", "fd00:ec2::254", "100.100.100.200"))
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052
_LEGACY_NUMERIC = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


class OutboundRefused(requests.exceptions.ConnectionError):
    """A destination the fence will not connect to; the message says which address and why."""


class _Blocked(Exception):
    """Carries a refusal out of urllib3: not an OSError, so urllib3 neither retries nor wraps it."""

    def __init__(self, refusal: OutboundRefused) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


def resolve_name(host: str, port: int) -> list[str]:
    """The addresses a name resolves to (the system resolver); tests replace this function."""
    return [info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)]


def literal_address(host: str) -> Address | None:
    """`host` as an IP address if it is written as one, in any form the C resolver accepts
    (inet_aton(3): 2130706433, 0177.0.0.1, 0x7f.1), without asking DNS."""
    host = host.strip("[]").rstrip(".")  # "10.0.0.1." is 10.0.0.1 to the resolver too
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _LEGACY_NUMERIC.match(host):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def _kind(address: Address) -> str | None:
    """Why `address` is not a public destination, or None when it is one."""
    if address in METADATA:
        return "a cloud metadata address"
    checks = (("is_unspecified", "the unspecified address"), ("is_loopback", "a loopback address"),
              ("is_link_local", "a link-local address"), ("is_multicast", "a multicast address"))
    for attribute, kind in checks:
        if getattr(address, attribute):
            return kind
    if address in _SHARED:
        return "a shared (carrier-grade NAT) address"
    if address.is_private:
        return "a private address"
    if address.is_reserved or not address.is_global:
        return "a reserved or non-public address"
    return None


def _embedded_ipv4(address: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (IPv4-mapped, 6to4, NAT64), which is where a
    connection to it really ends up."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


@dataclass(frozen=True)
class Fence:
    """The destinations outbound requests may reach: public unicast, plus `allowed`."""

    allowed: tuple[Network, ...] = ()

    @classmethod
    def from_settings(cls, settings: Any) -> "Fence":
        return cls(allowed_networks(settings.outbound_allow))

    # --- the test ---------------------------------------------------------------------

    def refusal(self, address: Address, host: str | None = None) -> str | None:
        """Why a connection to `address` is refused, or None if it may be made."""
        inner = _embedded_ipv4(address)
        if self._allows(address) or (inner is not None and self._allows(inner)):
            return None
        named = f"{host} resolves to {address}" if host and host.strip("[]") != str(address) else str(address)
        if inner is not None:
            kind = _kind(inner)
            return f"{named} is an IPv4-in-IPv6 form of {inner}, {kind}; outbound requests go to public addresses only" \
                if kind else None
        kind = _kind(address)
        return f"{named} is {kind}; outbound requests go to public addresses only" if kind else None

    def _allows(self, address: Address) -> bool:
        for network in self.allowed:
            if address.version == network.version and address in network:
                return address not in METADATA or network.num_addresses == 1
        return False

    def reachable(self, host: str, port: int) -> list[Address]:
        """The addresses of `host` a connection may use; OutboundRefused if there are none.
        A name that does not resolve raises socket.gaierror."""
        literal = literal_address(host)
        addresses = [literal] if literal is not None else [ipaddress.ip_address(a.split("%")[0])
                                                           for a in resolve_name(host, port)]
        permitted = [a for a in addresses if self.refusal(a, host) is None]
        if not permitted:
            raise OutboundRefused(self.refusal(addresses[0], host) if addresses else f"{host} has no address")
        return permitted

    def check_url(self, url: str) -> None:
        """The save-time check (the connect-time one still runs on every request): refuse a
        URL whose host is, or resolves only to, an address the fence refuses. A name that does
        not resolve now is accepted; it is checked again when a request is made."""
        try:
            parts = urlsplit(url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise OutboundRefused(f"{url!r} is not a valid URL") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise OutboundRefused("only http and https URLs with a host can be reached")
        try:
            self.reachable(parts.hostname, port)
        except (socket.gaierror, UnicodeError):
            return

    # --- the session ------------------------------------------------------------------

    def session(self, retry: Retry | None = None) -> requests.Session:
        """A requests Session whose every connection passes the fence, that never follows a
        redirect and ignores proxy settings in the environment. `retry` (urllib3's Retry) is
        applied to connection errors and the statuses it names, never to a refusal."""
        return self._mount(_NoRedirectSession(), retry)

    def protect(self, session: requests.Session, retry: Retry | None = None) -> requests.Session:
        """Fence a session made elsewhere (e.g. Authlib's `OAuth2Session`, a requests.Session
        subclass): its connections pass the fence, environment proxies are ignored, and a
        redirect raises TooManyRedirects instead of being followed."""
        session.max_redirects = 0
        return self._mount(session, retry)

    def _mount(self, session: requests.Session, retry: Retry | None) -> requests.Session:
        session.trust_env = False
        adapter = _FencedAdapter(self, max_retries=retry or Retry(0, read=False))
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        return session


def configured_refusals(settings: Any) -> list[str]:
    """The configured destinations (transfer peers, token issuers' and identity providers'
    JWKS) the fence will refuse, each with the reason and the setting to change: said once
    at start-up, so an operator learns it before the first transfer fails."""
    fence = Fence.from_settings(settings)
    urls = [("EHCP_TRUST_LIST", p.get("base_url")) for p in settings.trust_list]
    urls += [("EHCP_TRUSTED_ISSUERS", i.jwks_uri) for i in settings.trusted_issuers]
    urls += [("EHCP_IDENTITY_PROVIDERS", p.jwks_uri) for p in settings.identity_providers]
    found = []
    for setting, url in urls:
        try:
            fence.check_url(str(url or ""))
        except OutboundRefused as refused:
            found.append(f"{setting}: {url} will not be reached ({refused}); allow it in EHCP_OUTBOUND_ALLOW if intended")
    return found


def allowed_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """EHCP_OUTBOUND_ALLOW entries (addresses or CIDR networks) as networks; ValueError names a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return tuple(networks)


class _NoRedirectSession(requests.Session):
    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        kwargs["allow_redirects"] = False  # a redirect could point anywhere: the caller sees the 3xx
        return super().send(request, **kwargs)


class _FencedAdapter(HTTPAdapter):
    def __init__(self, fence: Fence, **kwargs: Any) -> None:
        self._fence = fence
        super().__init__(**kwargs)

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = _pool_classes(self._fence)

    def proxy_manager_for(self, proxy: str, **kwargs: Any):
        raise OutboundRefused("outbound requests do not go through proxies (the fence checks the destination)")

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        try:
            return super().send(request, **kwargs)
        except _Blocked as blocked:
            blocked.refusal.request = request
            raise blocked.refusal from None


class _FencedConnection:
    """Mixed into urllib3's connections: resolve, check, then connect to a checked address
    only (TLS still verifies the certificate against the host name)."""

    fence: Fence

    def _new_conn(self):  # type: ignore[no-untyped-def]
        requested = self._dns_host  # type: ignore[attr-defined]
        try:
            addresses = self.fence.reachable(requested, self.port)  # type: ignore[attr-defined]
        except OutboundRefused as refusal:
            raise _Blocked(refusal) from None
        except socket.gaierror as error:
            raise NameResolutionError(self.host, self, error) from error  # type: ignore[attr-defined]
        try:
            for address in addresses:
                self._dns_host = str(address)
                try:
                    return super()._new_conn()  # type: ignore[misc]
                except (NewConnectionError, ConnectTimeoutError):
                    if address is addresses[-1]:
                        raise
        finally:
            self._dns_host = requested


@lru_cache(maxsize=32)
def _pool_classes(fence: Fence) -> dict[str, type]:
    http = type("FencedHTTPConnection", (_FencedConnection, HTTPConnection), {"fence": fence})
    https = type("FencedHTTPSConnection", (_FencedConnection, HTTPSConnection), {"fence": fence})
    return {"http": type("FencedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
            "https": type("FencedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https})}
