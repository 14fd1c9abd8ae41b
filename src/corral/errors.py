"""The one exception tree of corral.  LEAF: imports the stdlib only.

Every error that can reach a user derives from :class:`CorralError` and carries a
stable ``code`` (used as the API's error code) and a message a person can act on::

    CorralError                 code            HTTP
    ├── SpecError               invalid_spec    422   bad target, spec or option (names file, line, field)
    │   └── TemplateError       template_error  422   a template or export failed to render (file, line, key)
    ├── NotFound                not_found       404   no such service, instance, secret or resource
    ├── Conflict                conflict        409   the request clashes with the current state
    ├── LauncherError           launcher_error  502   the launcher refused a request (carries its code)
    │   └── SpawnFailed         spawn_failed    422   the command could not be started (missing binary, user)
    ├── Unavailable             unavailable     503   the supervisor or launcher cannot be reached
    ├── NotReady                not_ready       504   a service did not become ready in time
    ├── StateWriteFailed        state_write_failed 507 a state file could not be written (disk
    │                                                  full, I/O error); nothing changed
    ├── ClusterError            cluster_error   502   etcd refused a request (carries etcd's gRPC code)
    │   ├── ClusterUnavailable  cluster_unavailable 503  no etcd endpoint answers (each one's reason)
    │   ├── ClusterAuthError    cluster_auth    502   etcd refused the user, password or permission
    │   └── ClusterTLSError     cluster_tls     502   TLS does not match (scheme, CA, client certificate)
    └── AuthError               unauthorized    401   missing or wrong token

The CLI turns any of them into one line on stderr and a non-zero exit; the API turns
them into ``{"error": {"code": ..., "message": ...}}`` with the status above.
"""

from __future__ import annotations


class CorralError(Exception):
    """Base of every error corral reports to a user."""

    code = "error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class SpecError(CorralError):
    """A target, spec file or option is invalid.  ``problems`` lists each one."""

    code = "invalid_spec"
    status = 422

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class NotFound(CorralError):
    """A named thing (service, instance, secret, resource) does not exist."""

    code = "not_found"
    status = 404


class Conflict(CorralError):
    """The request is valid but clashes with the current state."""

    code = "conflict"
    status = 409


class LauncherError(CorralError):
    """The launcher answered a request with an ``Error`` frame."""

    code = "launcher_error"
    status = 502

    def __init__(self, launcher_code: str, message: str) -> None:
        super().__init__(message)
        self.launcher_code = launcher_code


class SpawnFailed(LauncherError):
    """A service's command could not be started at all (not an exit of the child)."""

    code = "spawn_failed"
    status = 422


class Unavailable(CorralError):
    """The supervisor or the launcher cannot be reached right now."""

    code = "unavailable"
    status = 503


class NotReady(CorralError):
    """``--wait`` ran out, or the service failed, before every instance was ready.

    ``details`` holds the last log lines, for the person to see why.
    """

    code = "not_ready"
    status = 504

    def __init__(self, message: str, details: list[str] | None = None) -> None:
        super().__init__(message)
        self.details = details or []


class StateWriteFailed(CorralError):
    """A state file could not be written (``ENOSPC``, ``EIO``...): the change is refused,
    and the previous file is intact and still in force."""

    code = "state_write_failed"
    status = 507

    def __init__(self, path: object, exc: OSError) -> None:
        super().__init__(f"cannot write {path}: {exc.strerror or exc}; nothing was changed")
        self.errno = exc.errno


class TemplateError(SpecError):
    """A template (or an ``exports`` expression) could not be rendered.

    ``file`` and ``line`` say where (``line`` is 0 when unknown); the message starts with
    ``file:line:`` and names the missing key, never a value.
    """

    code = "template_error"

    def __init__(self, file: str, line: int, reason: str) -> None:
        where = f"{file}:{line}" if line else file
        super().__init__(f"{where}: {reason}")
        self.file = file
        self.line = line
        self.reason = reason


class ClusterError(CorralError):
    """etcd answered, and refused.  ``grpc_code`` is etcd's code (0 when not from etcd)."""

    code = "cluster_error"
    status = 502

    def __init__(self, message: str, grpc_code: int = 0) -> None:
        super().__init__(message)
        self.grpc_code = grpc_code


class ClusterUnavailable(ClusterError):
    """No etcd endpoint could be reached; the message names each one and why."""

    code = "cluster_unavailable"
    status = 503


class ClusterAuthError(ClusterError):
    """etcd refused the credentials (wrong user or password) or a permission."""

    code = "cluster_auth"


class ClusterTLSError(ClusterError):
    """The TLS setup does not match the endpoint's (http/https, CA, client certificate)."""

    code = "cluster_tls"


class AuthError(CorralError):
    """A request came without a valid token."""

    code = "unauthorized"
    status = 401
