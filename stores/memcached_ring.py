"""Where a session lives among the memcached nodes, and what the IOLoop knows of their health.

Placement: rendezvous hashing over the nodes in the ring, so losing a node loses only its share.
A node that fails answers 503 for its sessions (the session is not silently dropped) until it has
failed for ``dead_after`` seconds; it then leaves the ring, its sessions count as lost, and the
store's probe puts it back once it answers, emptied first (see `MemcachedStore.probe`): a node
that was only cut off still holds what it held, sessions logged out meanwhile among them.
Kept on the IOLoop thread only.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping

from pymemcache.client.rendezvous import RendezvousHash

from stores.base import StoreUnavailable
from stores.memcached_client import CheckedPooledClient

log = logging.getLogger("stores.memcached")


class Node:
    """One memcached server: its pooled client and what the IOLoop knows of its health."""

    def __init__(self, name: str, client: CheckedPooledClient) -> None:
        self.name = name
        self.client = client
        self.failing_since: float | None = None
        self.in_ring = True
        # It answered, but would not be emptied to rejoin the ring (logged once).
        self.flush_refused = False


class Ring:
    """The nodes by name, the one each key lives on, and their health."""

    def __init__(self, clients: Mapping[str, CheckedPooledClient], dead_after: float) -> None:
        self.nodes = {name: Node(name, client) for name, client in clients.items()}
        self.dead_after = dead_after
        self._hash = RendezvousHash(nodes=list(self.nodes))
        self._only_node = next(iter(self.nodes.values())) if len(self.nodes) == 1 else None

    def node_name(self, key: str) -> str | None:
        """The node ``key`` lives on now (None when no node is in the ring)."""
        name: str | None = self._hash.get_node(key)
        return name

    def node_for(self, key: str) -> Node:
        """The node for ``key``; `StoreUnavailable` when none is in the ring."""
        if self._only_node is not None:
            # One node: nothing to place, and pymemcache's hashing is pure Python.
            return self._only_node
        name = self._hash.get_node(key)
        if name is None:
            raise StoreUnavailable("no memcached node is up")
        return self.nodes[name]

    def failed(self, node: Node, error: BaseException) -> None:
        """Note a failed call; a node failing for ``dead_after`` seconds leaves the ring."""
        now = time.monotonic()
        if node.failing_since is None:
            node.failing_since = now
            log.error("memcached %s unavailable: %s", node.name, error.__class__.__name__)
        elif node.in_ring and len(self.nodes) > 1 and now - node.failing_since >= self.dead_after:
            # With one node there is nowhere else to go: it stays, and requests get 503.
            node.in_ring = False
            self._hash.remove_node(node.name)
            log.error(
                "memcached %s removed from the ring after %.1fs; its sessions are lost", node.name, self.dead_after
            )

    def succeeded(self, node: Node) -> None:
        """Note a call that worked: a failing node in the ring is well again. One that left the
        ring stays out until `rejoin`."""
        if node.failing_since is not None and node.in_ring:
            node.failing_since = None
            log.warning("memcached %s available again", node.name)

    def rejoin(self, node: Node) -> None:
        """Put a node that left the ring back in it (once it answers and has been emptied)."""
        node.failing_since = None
        node.flush_refused = False  # should it leave again and refuse again, that is logged again
        if not node.in_ring:
            node.in_ring = True
            self._hash.add_node(node.name)
            log.warning("memcached %s back in the ring, emptied: the sessions it held stay logged out", node.name)
