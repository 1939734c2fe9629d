"""Topic matching: a trie of binding patterns walked as a lazily built DFA.

Words split on ``.`` (``""`` is zero words, ``a..b`` has an empty middle word), ``*`` takes
exactly one word, ``#`` zero or more; case-sensitive.
"""

from __future__ import annotations

from collections.abc import Iterable

from bus.routing.destinations import NO_MATCH, Destination, Matched, matched

__all__ = ["TopicNode", "TopicState", "topic_matches"]

# Bounds of the lazily built states (a few MiB at most; 1,000 topic bindings of the bench
# use about 2,100 states and 1,800 transitions): past them everything is dropped and built
# again, so a stream of unique words costs NFA steps, never unbounded memory.
_MAX_STATES = 8192
_MAX_TRANSITIONS = 65536


class TopicNode:
    __slots__ = ("children", "dests", "hash", "is_hash", "star", "states", "transitions")

    def __init__(self, is_hash: bool = False) -> None:
        self.children: dict[str, TopicNode] = {}
        self.star: TopicNode | None = None
        self.hash: TopicNode | None = None
        self.is_hash = is_hash  # reached through a '#': may take any further word
        self.dests: list[Destination] = []
        # On the root only: the sets of live nodes met so far (see TopicState), built lazily.
        self.states: dict[tuple[TopicNode, ...], TopicState] | None = None
        self.transitions = 0

    def insert(self, pattern: str, dest: Destination) -> None:
        self.states = None  # the trie changes: every cached state is stale
        node = self
        for word in _words(pattern):
            if word == "#":
                node.hash = node.hash or TopicNode(is_hash=True)
                node = node.hash
            elif word == "*":
                node.star = node.star or TopicNode()
                node = node.star
            else:
                node = node.children.setdefault(word, TopicNode())
        node.dests.append(dest)

    def match(self, key: str, out: list[Destination]) -> None:
        # Advance the set of live trie nodes word by word (an NFA), so a node is visited
        # at most once per word however many '#' lead to it: linear in the key length.
        # Each set met is kept as a TopicState with its transitions (a DFA built lazily), so
        # a key costs one dict lookup per word once its words have been seen in that
        # position, even when the key itself is new (ids in keys). Ordered like the NFA:
        # results (and traces) are deterministic.
        state = self.final_state(key)
        if state is not None:
            out.extend(state.dests)

    def final_state(self, key: str) -> TopicState | None:
        """The set of nodes ``key`` ends in (None once no node is left): see :meth:`match`."""
        if (
            self.states is None
            or len(self.states) > _MAX_STATES
            or self.transitions > _MAX_TRANSITIONS
        ):
            self.states, self.transitions = {}, 0
        state = self._state((self,))
        for word in _words(key):
            state = state.step(word, self)
            if not state.nodes:
                return None
        return state

    def _state(self, nodes: Iterable[TopicNode]) -> TopicState:
        closure: dict[TopicNode, None] = {}
        for node in nodes:
            _enter(closure, node)
        key = tuple(closure)
        assert self.states is not None
        state = self.states.get(key)
        if state is None:
            state = self.states[key] = TopicState(key)
        return state


class TopicState:
    """One set of live trie nodes and the transitions found from it so far."""

    __slots__ = ("_matched", "dests", "literals", "next", "nodes", "other")

    def __init__(self, nodes: tuple[TopicNode, ...]) -> None:
        self.nodes = nodes
        self.dests = [dest for node in nodes for dest in node.dests]
        self._matched: Matched | None = None
        # Words some node takes literally; any other word moves only through '*' and '#'.
        self.literals = frozenset(word for node in nodes for word in node.children)
        self.next: dict[str, TopicState] = {}
        self.other: TopicState | None = None

    @property
    def matched(self) -> Matched:
        """The bindings ending here, split for the routing loop (computed once)."""
        if self._matched is None:
            self._matched = matched(self.dests) if self.dests else NO_MATCH
        return self._matched

    def step(self, word: str, root: TopicNode) -> TopicState:
        found = self.next.get(word)
        if found is not None:
            return found
        literal = word in self.literals
        if not literal and self.other is not None:
            return self.other
        advanced: list[TopicNode] = []
        for node in self.nodes:
            if node.is_hash:
                advanced.append(node)
            if literal:
                child = node.children.get(word)
                if child is not None:
                    advanced.append(child)
            if node.star is not None:
                advanced.append(node.star)
        found = root._state(advanced)
        if literal:
            self.next[word] = found
            root.transitions += 1
        else:
            self.other = found
        return found


def _enter(states: dict[TopicNode, None], node: TopicNode | None) -> None:
    # A '#' may also take no word at all: entering a node enters its '#' chain too.
    while node is not None and node not in states:
        states[node] = None
        node = node.hash


def _words(key: str) -> list[str]:
    # The broker splits "" into zero words, but "a." into ["a", ""].
    return key.split(".") if key else []


def topic_matches(pattern: str, key: str) -> bool:
    """Does topic binding ``pattern`` match routing ``key`` (one-off, uncompiled)?"""
    root = TopicNode()
    marker = Destination("", False, "")
    root.insert(pattern, marker)
    out: list[Destination] = []
    root.match(key, out)
    return bool(out)
