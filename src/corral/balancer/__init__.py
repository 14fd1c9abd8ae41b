"""corral's load balancer: a process of its own, configured over a control socket.

STDLIB ONLY (uvloop when installed): it must not import the supervisor, the API or the
CLI, so a supervisor restart or upgrade never touches the data path.  Modules:
:mod:`.choice` (pure backend choice), :mod:`.pipe` (the two halves of a proxied
connection), :mod:`.proxy` (listeners, backends, figures), :mod:`.control` (the control
protocol), :mod:`.ports` (the ``SERVICE_PORT_<NAME>`` allocator).  Each imports only the
ones before it (an import-linter contract).
"""
