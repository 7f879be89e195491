"""Decode YAML or JSON text from a tenant within fixed budgets of size, depth and alias
expansion, so that no document costs the server more than a small, known amount of time
and memory, and none ends in a RecursionError.

YAML aliases are references: PyYAML builds `*a` as the same Python object as `&a`, so a
"billion laughs" document is small in memory but explodes in anything that walks it
(validation, `repr` in an error message, JSON encoding for the store). The composed node
graph is therefore measured, with every alias counted as the nodes it stands for, before
any Python object is built.

A leaf of json and yaml only, so that the `capsule` CLI decodes template files with the
same budgets (a hostile file cannot hang it either) without importing the server. The
server turns `DocumentError` into `InvalidInput` where it calls these functions.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_DEPTH = 64  # nesting of lists and maps; real templates use fewer than 10
MAX_NODES = 100_000  # scalars, lists and maps after alias expansion
MAX_TEXT_BYTES = 256 * 1024  # one template


class DocumentError(ValueError):
    """A document that is not valid YAML/JSON or is over a budget; `message` says which
    (prefixed with the source), in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class _BudgetExceeded(Exception):
    """A document over one of the budgets; `message` names which."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


_TIMESTAMP = "tag:yaml.org,2002:timestamp"


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses documents nested deeper than MAX_DEPTH (PyYAML's
    composer recurses once per level). Unquoted dates stay strings, as in YAML 1.2: a
    template has no date fields, and a date object could not be stored as JSON."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:  # noqa: N803 - PyYAML's name
        # The scanner runs ahead of the composer, and its cost grows with the square of
        # the open flow collections (it revisits every pending simple key per token):
        # "[" * 2000 took seconds before the composer's depth check was reached.
        if self.flow_level >= MAX_DEPTH:
            raise _BudgetExceeded(f"nested deeper than {MAX_DEPTH} levels")
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _BudgetExceeded(f"nested deeper than {MAX_DEPTH} levels")
            return Composer.compose_node(self, parent, index)
        finally:
            self._depth -= 1


def _expanded_size(root: Node) -> int:
    """Nodes in the document with every alias expanded, computed once per distinct node,
    and stopped as soon as the total passes MAX_NODES."""
    sizes: dict[int, int] = {}

    def size(node: Node) -> int:
        known = sizes.get(id(node))
        if known is not None:
            return known
        total = 1
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > MAX_NODES:
                raise _BudgetExceeded(f"expands to more than {MAX_NODES} values "
                                      "(YAML aliases count as what they repeat)")
        sizes[id(node)] = total
        return total

    return size(root)


def json_depth_ok(raw: str | bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether JSON text nests lists and objects at most `limit` deep. A linear scan that
    skips strings: run before json.loads, whose C scanner recurses per level."""
    depth = 0
    in_string = escaped = False
    text = raw if isinstance(raw, bytes) else raw.encode("utf-8", "surrogatepass")
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def load_json(raw: str | bytes, source: str) -> Any:
    """JSON text → object, refusing documents nested deeper than MAX_DEPTH."""
    if not json_depth_ok(raw):
        raise DocumentError(f"{source}: nested deeper than {MAX_DEPTH} levels")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise DocumentError(f"{source}: not valid JSON ({exc})") from None


def load_yaml(text: str, source: str) -> Any:
    """One YAML document → object, within the depth and expansion budgets."""
    docs = _load_yaml_documents(text, source, single=True)
    return docs[0] if docs else None


def load_yaml_all(text: str, source: str, max_bytes: int = MAX_TEXT_BYTES) -> list[Any]:
    """Every document of a YAML stream (`---` between them), each within the budgets."""
    _check_size(text, source, max_bytes)
    return _load_yaml_documents(text, source, single=False)


def _load_yaml_documents(text: str, source: str, single: bool) -> list[Any]:
    try:
        # PyYAML's reader checks every character as the loader is built: a control
        # character is a bad document (400), not a bug.
        loader = _BoundedLoader(text)
    except yaml.YAMLError as exc:
        raise DocumentError(_yaml_problem(source, exc)) from None
    try:
        if single:
            node = loader.get_single_node()
            nodes = [] if node is None else [node]
        else:
            nodes = []
            while loader.check_node():
                node = loader.get_node()
                if node is not None:  # check_node() said one follows
                    nodes.append(node)
        out = []
        for node in nodes:
            _expanded_size(node)
            out.append(loader.construct_document(node))
        return out
    except _BudgetExceeded as exc:
        raise DocumentError(f"{source}: {exc.message}") from None
    except yaml.YAMLError as exc:
        raise DocumentError(_yaml_problem(source, exc)) from None
    except RecursionError:
        raise DocumentError(f"{source}: nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise DocumentError(f"{source}: {str(exc)[:200]}") from None
    finally:
        loader.dispose()


def check_yaml_syntax(text: str, source: str) -> None:
    """Parse a YAML stream's events once (no composing, no recursion) so a syntax error
    surfaces as PyYAML's own MarkedYAMLError with its line and column. The scan runs under
    the same flow-depth budget as loading: PyYAML's plain scanner is quadratic in open
    flow collections, so an unbounded pass would itself be the hang."""
    loader = _BoundedLoader(text)
    try:
        while loader.check_event():
            loader.get_event()  # type: ignore[no-untyped-call]
    except _BudgetExceeded as exc:
        raise DocumentError(f"{source}: {exc.message}") from None
    finally:
        loader.dispose()


def _yaml_problem(source: str, exc: yaml.YAMLError) -> str:
    return f"{source}: not valid YAML or JSON ({exc})".replace("\n", " ")


def _check_size(text: str, source: str, max_bytes: int) -> None:
    if len(text) > max_bytes or len(text.encode("utf-8", "surrogatepass")) > max_bytes:
        raise DocumentError(f"{source}: larger than {max_bytes} bytes")


def load_text(text: str, source: str = "template", max_bytes: int = MAX_TEXT_BYTES) -> Any:
    """YAML or JSON text → object. JSON is YAML, but JSON's errors read better from json."""
    _check_size(text, source, max_bytes)
    if text.lstrip().startswith("{"):
        if not json_depth_ok(text):
            raise DocumentError(f"{source}: nested deeper than {MAX_DEPTH} levels")
        try:
            return json.loads(text)
        except ValueError as json_exc:
            try:
                return load_yaml(text, source)
            except DocumentError:
                raise DocumentError(f"{source}: not valid YAML or JSON ({json_exc})") from None
    return load_yaml(text, source)


def check_depth(value: Any, source: str, limit: int = MAX_DEPTH) -> None:
    """Refuse an already decoded object nested deeper than `limit` (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    seen = 0
    while stack:
        item, depth = stack.pop()
        seen += 1
        if seen > MAX_NODES:
            raise DocumentError(f"{source}: holds more than {MAX_NODES} values")
        if isinstance(item, dict):
            children: list[Any] = list(item.values())
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            raise DocumentError(f"{source}: nested deeper than {limit} levels")
        stack.extend((c, depth + 1) for c in children)
