"""ICE servers (STUN and TURN) for consult peer connections, from the settings.

``HEALTH_ICE_SERVERS`` lists them as WebRTC ``RTCIceServer`` dictionaries in JSON. None are
configured by default, and then every peer connection gets ``iceServers=[]``: peers offer
their own addresses only, which is all a clinic LAN or a loopback test needs, and aiortc does
not reach for its default public STUN server. Participants receive the list in the
``joined`` message; the hub's own connections use only the STUN servers (a hub with a public
address needs no relay of its own, and a TURN allocation per participant would cost time and
ports for nothing).

TURN credentials are either written in the list (``username`` and ``credential``) or, with
``HEALTH_TURN_SECRET`` set to coturn's ``static-auth-secret``, made per participant as
coturn's REST API expects: username ``"<expiry unix time>:<participant id>"``, credential
``base64(HMAC-SHA1(secret, username))``, valid for ``HEALTH_TURN_CREDENTIAL_SECONDS``.

coturn setup (Debian's ``coturn`` package, on a host the clinics can reach; UDP 3478 and
the relay range open in the firewall)::

    # /etc/turnserver.conf
    listening-port=3478
    fingerprint
    use-auth-secret
    static-auth-secret=<a long random string, the same as HEALTH_TURN_SECRET>
    realm=consult.yinchuan-health.cn
    min-port=49160
    max-port=49400
    no-multicast-peers
    denied-peer-ip=0.0.0.0-0.255.255.255
    # behind 1:1 NAT (a cloud VM): external-ip=<public address>/<private address>

    systemctl enable --now coturn
    HEALTH_ICE_SERVERS='[{"urls": ["stun:turn.example.cn:3478",
        "turn:turn.example.cn:3478?transport=udp",
        "turn:turn.example.cn:3478?transport=tcp"]}]'
    HEALTH_TURN_SECRET=<the static-auth-secret>

aiortc uses at most one STUN and one TURN server of the list, and gathers every candidate
before it answers (up to five seconds when a server does not answer).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import time

from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCBundlePolicy

from consult.protocol import IceServer
from health.core.settings import Settings

logger = logging.getLogger(__name__)


def _is_turn(url: str) -> bool:
    return url.startswith(("turn:", "turns:"))


def participant_ice_servers(
    settings: Settings, participant_id: str, *, now: float | None = None
) -> list[IceServer]:
    """The ICE servers a participant's peer connection should use, with its credentials."""
    servers = []
    expiry = int((now if now is not None else time.time()) + settings.turn_credential_seconds)
    for server in settings.ice_servers:
        username, credential = server.username, server.credential
        if settings.turn_secret and username is None and any(map(_is_turn, server.urls)):
            username = f"{expiry}:{participant_id}"
            digest = hmac.new(
                settings.turn_secret.encode(), username.encode(), hashlib.sha1
            ).digest()
            credential = base64.b64encode(digest).decode()
        servers.append(IceServer(urls=list(server.urls), username=username, credential=credential))
    return servers


def peer_configuration(servers: list[IceServer]) -> RTCConfiguration:
    """aiortc's configuration for these servers: ``iceServers=[]`` when there are none.

    Every m-line on one transport (max-bundle): with aiortc's default, ``balanced``, the
    second and later m-lines of a kind stay on a transport that BUNDLE negotiation then
    discards, and carry nothing.
    """
    return RTCConfiguration(
        iceServers=[
            RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers
        ],
        bundlePolicy=RTCBundlePolicy.MAX_BUNDLE,
    )


def hub_configuration(settings: Settings) -> RTCConfiguration:
    """The hub's own peer connections: the configured STUN servers, no TURN."""
    stun = [
        IceServer(urls=[url for url in server.urls if not _is_turn(url)])
        for server in settings.ice_servers
    ]
    return peer_configuration([server for server in stun if server.urls])
