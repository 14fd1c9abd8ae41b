"""The supervisors under test, by command-line name."""

from __future__ import annotations

from bench.peers.base import Peer, PeerUnavailableError, Service, sleep_service
from bench.peers.circus import Circus
from bench.peers.corral import Corral
from bench.peers.pm2 import Pm2
from bench.peers.runit import Runit
from bench.peers.s6 import S6
from bench.peers.supervisord import Supervisord

PEERS: dict[str, type[Peer]] = {
    "corral": Corral,
    "supervisord": Supervisord,
    "circus": Circus,
    "pm2": Pm2,
    "s6": S6,
    "runit": Runit,
}

__all__ = ["PEERS", "Peer", "PeerUnavailableError", "Service", "sleep_service"]
