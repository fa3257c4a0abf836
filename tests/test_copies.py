"""`stores.copies.Copies`: the bounds on the copies a shared store keeps in this process."""

from __future__ import annotations

import pytest

from stores.base import Loaded, new_record
from stores.copies import Copies

NODE, OTHER_NODE = object(), object()


def loaded(n: int) -> Loaded:
    return Loaded({**new_record(1.0), "data": {"n": n}}, b"%d" % n)


def test_copies_are_handed_out_unconfirmed_and_only_for_their_node():
    copies = Copies(10)
    copies.keep("k", loaded(1), 100, NODE)
    copy = copies.get("k", NODE)
    assert copy == loaded(1)._replace(confirmed=False)
    # The key now lives on another node (the ring changed): that copy is never offered.
    assert copies.get("k", OTHER_NODE) is None
    assert copies.get("k", NODE) is None and len(copies) == 0 and copies.bytes == 0


def test_only_what_the_store_confirmed_is_kept():
    copies = Copies(10)
    with pytest.raises(ValueError):
        copies.keep("k", loaded(1)._replace(confirmed=False), 100)
    # A record sealed under an older key is written again at once: not worth a copy.
    copies.keep("k", loaded(1)._replace(stale_seal=True), 100)
    copies.keep("v", loaded(1)._replace(version=None), 100)
    assert len(copies) == 0


def test_copies_are_bounded_by_count_least_recently_used_first():
    copies = Copies(3)
    for n in range(3):
        copies.keep(f"k{n}", loaded(n), 10)
    assert copies.get("k0") is not None  # used: k1 is now the oldest
    copies.keep("k3", loaded(3), 10)
    assert [copies.get(f"k{n}") is not None for n in range(4)] == [True, False, True, True]
    assert len(copies) == 3 and copies.bytes == 30


def test_copies_are_bounded_by_the_bytes_of_their_records():
    copies = Copies(1000, max_bytes=1000)
    for n in range(10):
        copies.keep(f"k{n}", loaded(n), 300)
    assert len(copies) == 3 and copies.bytes == 900
    assert [copies.get(f"k{n}") is not None for n in range(10)] == [False] * 7 + [True] * 3
    copies.keep("huge", loaded(99), 1001)  # larger than the whole budget: not kept, nothing dropped
    assert copies.get("huge") is None and len(copies) == 3
    # A key kept again replaces its copy and its size.
    copies.keep("k9", loaded(9), 100)
    assert copies.bytes == 700 and len(copies) == 3


def test_no_copies_kept_when_turned_off():
    copies = Copies(0)
    copies.keep("k", loaded(1), 10)
    assert copies.get("k") is None and len(copies) == 0
