"""Moving corral's target to and from other tools.  PURE: values in, text out, no I/O.

``k8s`` turns a target into Kubernetes manifests (``corral export k8s``).
"""
