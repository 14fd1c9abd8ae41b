"""Reading YAML text: the loaders, a fast path straight from libyaml's events, the node
tree (for line numbers) and keys given twice.

LEAF: imports the stdlib, yaml and :mod:`corral.spec.problems` only.

YAML is read with only ``true``/``false`` as booleans, so ``on:`` (a service's address) stays
a key and ``yes``/``on`` reach pydantic as strings (which still accepts them for bool fields).
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from corral.errors import SpecError

from .problems import Loc, Problem


class Loader(yaml.SafeLoader):
    """SafeLoader where only true/false are booleans (so ``on:`` stays a key)."""


Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)

_FastBase: type = getattr(yaml, "CSafeLoader", Loader)


class FastLoader(_FastBase):  # type: ignore[misc]
    """libyaml's parser with the same resolvers: for the common case of a valid file."""


FastLoader.yaml_implicit_resolvers = Loader.yaml_implicit_resolvers


UNUSUAL = object()
_STR = yaml.resolver.BaseResolver.DEFAULT_SCALAR_TAG
_EVENT = {yaml.ScalarEvent: 0, yaml.MappingStartEvent: 1, yaml.SequenceStartEvent: 2,
          yaml.MappingEndEvent: 3, yaml.SequenceEndEvent: 3, yaml.DocumentStartEvent: 4,
          yaml.StreamStartEvent: 5, yaml.DocumentEndEvent: 5, yaml.StreamEndEvent: 6}


def plain_data(text: str) -> object:
    """What ``yaml.load(text, Loader=FastLoader)`` returns, built straight from libyaml's
    events, or ``UNUSUAL`` for a document this does not handle (anchors, aliases, tags,
    merge keys, several documents, a key that is a list or a mapping).

    Why: for a 1,000-process target (150 KB), PyYAML's Python composer, resolver and
    constructor take about 8x the time libyaml needs to parse; most scalars are strings
    whose first character no implicit resolver starts with, settled by one dict look-up.
    Raises yaml.YAMLError on a syntax error, as ``yaml.load`` does.
    """
    loader = FastLoader(text)
    resolvers = FastLoader.yaml_implicit_resolvers
    constructors = FastLoader.yaml_constructors
    try:
        stack: list[Any] = []  # the open containers
        keys: list[Any] = []  # per open mapping: its pending key, or UNUSUAL for none
        root: object = None
        documents = 0
        while True:
            event = loader.get_event()
            kind = _EVENT.get(type(event))
            if kind is None:  # an alias
                return UNUSUAL
            if kind >= 4:
                if kind == 6:
                    return root
                if kind == 4:
                    documents += 1
                    if documents > 1:  # yaml.load refuses it: let it say why
                        return UNUSUAL
                continue
            if kind == 3:
                value = stack.pop()
                if isinstance(value, dict):
                    keys.pop()
            else:
                if event.anchor is not None or event.tag not in (None, "!"):
                    return UNUSUAL
                if kind == 0:
                    raw = event.value
                    tag = _STR
                    if event.implicit[0]:
                        for tag_, rx in (resolvers.get(raw[0] if raw else "", ())
                                         or ()):
                            if rx.match(raw):
                                tag = tag_
                                break
                        else:
                            for tag_, rx in resolvers.get(None, ()):
                                if rx.match(raw):
                                    tag = tag_
                                    break
                    if tag == _STR:
                        value = raw
                    elif tag in _PLAIN_TAGS:
                        value = constructors[tag](loader, yaml.ScalarNode(tag, raw))
                    else:  # merge keys ("<<"), "=" values
                        return UNUSUAL
                else:
                    value = {} if kind == 1 else []
                if not stack:
                    root = value
                else:
                    parent = stack[-1]
                    if type(parent) is list:
                        parent.append(value)
                    elif keys[-1] is UNUSUAL:
                        if kind != 0:  # a list or a mapping as a key
                            return UNUSUAL
                        keys[-1] = value
                    else:
                        if keys[-1] in parent:  # a key given twice: the slow path says where
                            return UNUSUAL
                        parent[keys[-1]] = value
                        keys[-1] = UNUSUAL
                if kind != 0:
                    stack.append(value)
                    if kind == 1:
                        keys.append(UNUSUAL)
    finally:
        loader.dispose()


_PLAIN_TAGS = frozenset(f"tag:yaml.org,2002:{t}"
                        for t in ("null", "bool", "int", "float", "timestamp"))


def keys_twice(node: yaml.Node | None, loc: Loc = ()) -> list[Problem]:
    """A problem for every key given twice in one mapping: YAML loaders keep the last one
    silently, so a second ``hooks:`` would drop the first without a word."""
    problems: list[Problem] = []
    if isinstance(node, yaml.MappingNode):
        first: dict[str, int] = {}
        for key, value in node.value:
            if not isinstance(key, yaml.ScalarNode):
                continue
            line = key.start_mark.line + 1
            if key.value in first:
                problems.append(((*loc, key.value), f"given twice (also on line "
                                 f"{first[key.value]}); merge the two"))
            else:
                first[key.value] = line
            problems += keys_twice(value, (*loc, key.value))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            problems += keys_twice(item, (*loc, i))
    return problems


def compose(text: str, source: str) -> tuple[object, yaml.Node | None]:
    loader: Loader | None = None
    try:
        # Inside the try: the reader refuses some text (control characters) right here.
        loader = Loader(text)
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        if isinstance(e, yaml.reader.ReaderError):  # a character YAML does not allow
            where = f"{source}:{text.count(chr(10), 0, e.position) + 1}"
            code = ord(e.character) if isinstance(e.character, str) else int(e.character)
            e = yaml.YAMLError(f"character #x{code:04x} is not allowed in YAML")
        problem, context = getattr(e, "problem", None) or str(e), getattr(e, "context", None)
        problem = f"{context} {problem}" if context and problem.startswith("but") else problem
        raise SpecError(f"{where}: invalid YAML: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()
