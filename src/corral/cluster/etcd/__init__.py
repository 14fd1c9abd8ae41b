"""The one place that speaks to etcd: an asyncio client over etcd's v3 JSON gateway.

etcd serves its gRPC API as JSON under ``/v3/`` (grpc-gateway); this client posts to it
with httpx (see ``reference/etcd-eval.md`` for why: asyncio, TLS, auth and the election
API, with no gRPC stack).  What it does about the gateway's ways:

- keys and values travel base64-encoded; int64 fields come back as text; fields equal to
  their default are left out (``succeeded: false`` is absent), so every read has a default;
- **several endpoints**: a request goes to the current one; a transport failure, a
  timeout or etcd's "unavailable / no leader / timed out" moves to the next one (the
  first is tried twice in a round: a pooled connection the server closed is not a dead
  endpoint).  Requests have a short timeout (1 s by default), because a follower whose
  leader died holds a request for up to 7 s before it answers; while the endpoints are
  only busy (no answer in time, no leader yet), rounds go on for ``retry_for`` (3 s),
  which covers an election; when every endpoint refuses, the request fails at once;
- writes and keepalives carry ``Grpc-Metadata-hasleader: true``, so a member that lost
  its quorum says so at once instead of timing out;
- **user/password**: ``/v3/auth/authenticate`` gives a token sent as the raw
  ``Authorization`` header; a token etcd no longer accepts (expired, or its member
  restarted) is replaced by authenticating again, once per request;
- **TLS**: a CA to trust and an optional client certificate (without a CommonName: once
  auth is on, the gateway refuses certificates that have one);
- **watches** (:class:`Watch`) survive a lost endpoint: they reconnect to the next one
  and resume at the revision after the last one seen; when that revision was compacted
  they list the prefix again and hand over the whole set (``reset``).

Errors are :class:`~corral.errors.ClusterError` subclasses with one line a person can act
on: :class:`~corral.errors.ClusterUnavailable` names every endpoint and why it failed,
:class:`~corral.errors.ClusterAuthError` the user, :class:`~corral.errors.ClusterTLSError`
what does not match.  The password never appears in a message or a repr.

Modules: :mod:`.settings` (endpoints, TLS files, credentials), :mod:`.wire` (the
gateway's JSON and what its failures mean), :mod:`.client` (:class:`EtcdClient` and its
:class:`Watch`).  Import from here.
"""

from .client import EtcdClient, Watch
from .settings import (
    DEFAULT_PORT,
    DEFAULT_RETRY_FOR,
    DEFAULT_TIMEOUT,
    EtcdSettings,
    parse_endpoints,
    read_endpoints_file,
)
from .wire import ConnState, KeyValue, Lease, LeaseNotFound, WatchBatch, WatchEvent, prefix_end

__all__ = [
    "DEFAULT_PORT",
    "DEFAULT_RETRY_FOR",
    "DEFAULT_TIMEOUT",
    "ConnState",
    "EtcdClient",
    "EtcdSettings",
    "KeyValue",
    "Lease",
    "LeaseNotFound",
    "Watch",
    "WatchBatch",
    "WatchEvent",
    "parse_endpoints",
    "prefix_end",
    "read_endpoints_file",
]
