"""``${NAME}`` substitution of secrets into a process spec.  Pure: no I/O, no clock.

Grammar of a field's text (the same in every field)::

    ${NAME}     the value of secret NAME (NAME: [A-Za-z_][A-Za-z0-9_]*)
    $${         a literal "${" (so "$${HOME}" reaches the program as "${HOME}")
    $ anything  else is left as it is: "$HOME", "$$" and "$1" are the shell's business

A ``${`` with a bad name or no closing ``}`` is an error, so a typo is caught when the spec
is checked rather than passed on to a program.  Substitution is one pass: a value that
itself contains ``${X}`` is not expanded again.

Fields: :data:`FIELDS` -- ``command`` (each argv item as ``command[i]``, or the shell
string as ``command``), ``env.KEY`` (values; keys are not substituted), ``cwd``,
``before``, and ``resources[i].id`` (Launcho's deploy flow: ``id: "${BUNDLE_ID}"``, the
secret holding the sha256 that ``corral resource up`` printed).  Every message names the process and the field, and never a secret's value.

corral's own variables are not secrets: ``${CORRAL_SERVICE}``, ``${CORRAL_INSTANCE}`` and
``${SERVICE_PORT_<NAME>}`` (for each service the process receives through the balancer)
expand to the values corral also puts in the process's environment (see
:func:`own_names`); they win over a secret of the same name.  A name that is neither a
secret nor one of these is the error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping

from corral.errors import SpecError
from corral.spec.models import ProcessSpec

#: corral's own variables in every process's environment (besides SERVICE_PORT_<NAME>).
OWN = ("CORRAL_SERVICE", "CORRAL_INSTANCE")

FIELDS = ("command", "env", "cwd", "before", "resources")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# "$${" (escape), or "${" up to the next "}" (or to the end: unclosed).
_TOKEN = re.compile(r"\$\$\{|\$\{([^}]*)(\}?)")


class _SyntaxProblem(ValueError):
    """A ``${`` that is not a valid reference (the message says why)."""


def _scan(text: str) -> Iterator[tuple[int, int, str | None]]:
    """Yield ``(start, end, name)`` of each token: name None for the ``$${`` escape.

    Raises _SyntaxProblem for a bad name or a missing ``}``.
    """
    for match in _TOKEN.finditer(text):
        if match[0] == "$${":
            yield match.start(), match.end(), None
            continue
        name, closed = match[1], match[2]
        if not closed:
            raise _SyntaxProblem("'${' without a closing '}'; write '$${' for a literal '${'")
        if not _NAME.fullmatch(name):
            raise _SyntaxProblem(f"invalid secret name {name!r} in '${{...}}': use A-Z a-z 0-9 _, "
                                 "not starting with a digit; write '$${' for a literal '${'")
        yield match.start(), match.end(), name


def expand(text: str, values: Mapping[str, str]) -> str:
    """``text`` with each reference replaced by its value and ``$${`` by ``${``.

    Raises KeyError (with the name) for a name not in ``values``, _SyntaxProblem for bad syntax.
    """
    out: list[str] = []
    pos = 0
    for start, end, name in _scan(text):
        out.append(text[pos:start])
        out.append("${" if name is None else values[name])
        pos = end
    if pos == 0:
        return text
    out.append(text[pos:])
    return "".join(out)


def _fields(spec: ProcessSpec) -> Iterator[tuple[str, str]]:
    """``(field path, text)`` of every substitutable text of ``spec``, in spec order."""
    if isinstance(spec.command, str):
        yield "command", spec.command
    else:
        for i, arg in enumerate(spec.command):
            yield f"command[{i}]", arg
    for key, value in spec.env.items():
        yield f"env.{key}", value
    if spec.cwd is not None:
        yield "cwd", spec.cwd
    if spec.before is not None:
        yield "before", spec.before
    for i, ref in enumerate(spec.resources):
        yield f"resources[{i}].id", ref.id


def port_variable(service: str) -> str:
    """``SERVICE_PORT_<NAME>``: the variable holding an instance's port for ``service``
    (upper case, anything but A-Z and 0-9 made ``_``: ``api-v2`` -> ``SERVICE_PORT_API_V2``)."""
    return "SERVICE_PORT_" + re.sub(r"[^A-Z0-9]", "_", service.upper())


def own_names(spec: ProcessSpec, proxied: Iterable[str] | None = None) -> list[str]:
    """corral's own variables for ``spec``: :data:`OWN`, and ``SERVICE_PORT_<NAME>`` for
    each service it receives (of those in ``proxied`` when given: a socket-mode service
    hands over a socket, not a port)."""
    wanted = set(proxied) if proxied is not None else None
    return [*OWN, *(port_variable(n) for n in spec.receives if wanted is None or n in wanted)]


def references(spec: ProcessSpec) -> dict[str, list[str]]:
    """Which secrets ``spec`` uses, and where: ``{"DB_PASS": ["env.DATABASE_URL"], ...}``.

    corral's own variables (:func:`own_names`) are not secrets and are left out.  Lenient:
    a field with bad syntax contributes the names before the problem (use :func:`missing`
    to report it).  Names are in order of first use.
    """
    own = set(own_names(spec))
    used: dict[str, list[str]] = {}
    for field, text in _fields(spec):
        try:
            for _, _, name in _scan(text):
                if name is None or name in own:
                    continue
                if field not in used.setdefault(name, []):
                    used[name].append(field)
        except _SyntaxProblem:
            continue
    return used


def missing(spec: ProcessSpec, names: Iterable[str], own: Iterable[str] = ()) -> list[str]:
    """Every problem that would stop :func:`substitute`, given the secrets called ``names``
    and corral's own variables ``own`` (:func:`own_names`).

    One line per problem, ``<process>.<field>: <message>``: a bad reference, or a name
    that is neither a secret nor one of ``own``.  Empty when the spec can be substituted.
    """
    ours = list(own)
    known = set(names) | set(ours)
    problems: list[str] = []
    for field, text in _fields(spec):
        try:
            for _, _, name in _scan(text):
                if name is not None and name not in known:
                    problems.append(f"{spec.name}.{field}: {_not_set(name, ours)}")
        except _SyntaxProblem as exc:
            problems.append(f"{spec.name}.{field}: {exc}")
    return list(dict.fromkeys(problems))


def substitute(spec: ProcessSpec, values: Mapping[str, str], source: str,
               own: Mapping[str, str] | None = None) -> ProcessSpec:
    """A copy of ``spec`` with every reference replaced by its secret's value, or by the
    value of one of corral's own variables.

    Args:
        spec: the process as loaded (with ``${NAME}`` references).
        values: secret values by name (``SecretStore.values()``).
        source: where the spec came from (a file name, or the process name), put in
            front of each message unless it is the process name itself.
        own: corral's own variables for the instance being started (``CORRAL_INSTANCE``,
            ``SERVICE_PORT_WEB``...), which win over secrets of the same name.

    Returns:
        The spec to spawn.  It holds secret values: hand it to the launcher, never to a
        log, an event, a status or an error message (its repr shows them).  ``spec``
        itself is returned when it refers to no secret and has no ``$${``.

    Raises:
        SpecError: one problem per bad reference or missing secret, each naming the
            process and the field (e.g. ``web.env.DATABASE_URL: secret 'DB_PASS' is not
            set; ...``); never a value.
    """
    if own:
        values = {**values, **own}
    problems = missing(spec, values)
    if problems:
        prefix = f"{source}: " if source and source != spec.name else ""
        lines = [prefix + p for p in problems]
        head = f"{len(lines)} problems in {source or spec.name}:\n" if len(lines) > 1 else ""
        raise SpecError(head + "\n".join(lines), lines)
    update: dict[str, object] = {}
    empty: list[str] = []  # fields a spec requires non-empty that a secret made empty
    if isinstance(spec.command, str):
        if (command := expand(spec.command, values)) != spec.command:
            update["command"] = command
            empty += ["command"] if not command.strip() else []
    else:
        argv = [expand(arg, values) for arg in spec.command]
        if argv != spec.command:
            update["command"] = argv
            empty += ["command[0]"] if not argv[0] else []
    env = {key: expand(value, values) for key, value in spec.env.items()}
    if env != spec.env:
        update["env"] = env
    for key in ("cwd", "before"):
        text = getattr(spec, key)
        if text is not None and (new := expand(text, values)) != text:
            update[key] = new
            empty += [key] if not new else []
    resources = [ref.model_copy(update={"id": expand(ref.id, values)}) for ref in spec.resources]
    if resources != spec.resources:
        update["resources"] = resources
    bad_ids = [f"{spec.name}.resources[{i}].id: the secret it names does not hold a resource "
               "id (64 lower-case hex digits, as printed by corral resource up)"
               for i, ref in enumerate(resources) if not _SHA256.fullmatch(ref.id)]
    if empty or bad_ids:
        lines = [f"{spec.name}.{field}: is empty once its secrets are substituted"
                 for field in empty] + bad_ids
        raise SpecError("\n".join(lines), lines)
    return spec.model_copy(update=update) if update else spec


def _not_set(name: str, own: list[str] | None = None) -> str:
    if own and name.startswith(("CORRAL_", "SERVICE_PORT_")):
        return (f"{name!r} is neither a secret nor one of corral's variables for this process "
                f"({', '.join(own)}); set a secret with: corral secret set {name} -")
    return f"secret {name!r} is not set; set it with: corral secret set {name} -"
