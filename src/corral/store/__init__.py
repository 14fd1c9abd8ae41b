"""Secrets and resources: the two stores the supervisor owns in its state directory.

LEAF: imports the stdlib, :mod:`corral.spec` and :mod:`corral.errors` only (an import-linter
contract in ``pyproject.toml`` holds it to that).

* :mod:`.secrets` -- :class:`SecretStore`, named values in ``secrets.json`` (0600, atomic);
* :mod:`.subst` -- pure ``${NAME}`` substitution into a process spec;
* :mod:`.resources` -- :class:`ResourceStore`, content-addressed blobs under ``resources/``.

No value of a secret ever appears in a repr, a ``str`` or an error message of this package.
"""
