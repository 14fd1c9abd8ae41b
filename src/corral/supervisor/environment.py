"""What a process of an instance sees: its spec with secrets and corral's own variables
substituted, and its environment."""

from __future__ import annotations

from corral.spec import ProcessSpec
from corral.store import subst
from corral.store.secrets import SecretStore

from .instance import Instance


class Environment:
    """Substitutes secrets and instance variables into specs.

    Args:
        base: the environment every process starts from (the supervisor's own, less what
            is the launcher's business).
        secrets: the secret store whose values ``${NAME}`` stands for.
    """

    def __init__(self, base: dict[str, str], secrets: SecretStore) -> None:
        self.base = base
        self._secrets = secrets

    def effective(self, spec: ProcessSpec, inst: Instance | None = None) -> ProcessSpec:
        """``spec`` with its secrets, and ``inst``'s own variables (``CORRAL_INSTANCE``,
        ``SERVICE_PORT_*``...), substituted (the spec itself when it uses none).

        Raises:
            SpecError: a secret it uses is not set (removal is refused while in use, so
                only a hand-edited state directory gets here).
        """
        own = own_values(inst, spec) if inst is not None else None
        return subst.substitute(spec, self._secrets.values(), spec.name, own)

    def of(self, inst: Instance, spec: ProcessSpec) -> dict[str, str]:
        """The environment of ``inst``'s process (and of its hooks and exec checks)."""
        env = dict(self.base)
        env.update(self.effective(spec, inst).env)
        env["CORRAL_SERVICE"] = spec.name
        env["CORRAL_INSTANCE"] = str(inst.index)
        return env


def own_values(inst: Instance, spec: ProcessSpec) -> dict[str, str]:
    """corral's own variables for ``inst``: what ``${CORRAL_INSTANCE}`` and
    ``${SERVICE_PORT_<NAME>}`` stand for (its ports, once allocated)."""
    own = {"CORRAL_SERVICE": spec.name, "CORRAL_INSTANCE": str(inst.index)}
    for name, port in inst.ports.items():
        if name in spec.receives:
            own[subst.port_variable(name)] = str(port)
    return own
