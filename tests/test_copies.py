"""`stores.copies.Copies`: the bounds on the copies a shared store keeps in this process."""

from __future__ import annotations

from stores.base import Loaded, new_record
from stores.copies import Copies, unconfirmed

NODE, OTHER_NODE = "10.0.0.5:11211", "10.0.0.6:11211"


def value(n: int, size: int = 10) -> bytes:
    return b"%d" % n + b"x" * (size - len(b"%d" % n))


def test_copies_are_handed_out_only_for_their_node():
    copies = Copies(10)
    copies.keep("k", value(1), b"7", NODE)
    assert copies.get("k", NODE) == (value(1), b"7")
    # The key now lives on another node (the ring changed): that copy is never offered.
    assert copies.get("k", OTHER_NODE) is None
    assert copies.get("k", NODE) is None and len(copies) == 0 and copies.size == 0


def test_a_copy_is_handed_to_callers_unconfirmed_and_never_one_under_an_older_key():
    record = new_record(1.0)
    assert unconfirmed(Loaded(record, b"7")) == Loaded(record, b"7", False, False)
    assert unconfirmed(Loaded(record, b"7", stale_seal=True)) is None
    assert unconfirmed(None) is None


def test_copies_are_bounded_by_count_least_recently_used_first():
    copies = Copies(3)
    for n in range(3):
        copies.keep(f"k{n}", value(n), b"1")
    assert copies.get("k0") is not None  # used: k1 is now the oldest
    copies.keep("k3", value(3), b"1")
    assert [copies.get(f"k{n}") is not None for n in range(4)] == [True, False, True, True]
    assert len(copies) == 3 and copies.size == 30


def test_copies_are_bounded_by_the_bytes_of_their_values():
    copies = Copies(1000, max_bytes=1000)
    for n in range(10):
        copies.keep(f"k{n}", value(n, 300), b"1")
    assert len(copies) == 3 and copies.size == 900
    assert [copies.get(f"k{n}") is not None for n in range(10)] == [False] * 7 + [True] * 3
    copies.keep("huge", value(99, 1001), b"1")  # larger than the whole budget: not kept, nothing dropped
    assert copies.get("huge") is None and len(copies) == 3
    # A key kept again replaces its copy and its size.
    copies.keep("k9", value(9, 100), b"2")
    assert copies.size == 700 and len(copies) == 3 and copies.get("k9") == (value(9, 100), b"2")


def test_a_load_refreshes_a_copy_but_never_starts_one():
    copies = Copies(10)
    copies.refresh("k", value(1), b"1")
    assert copies.get("k") is None
    copies.keep("k", value(1, 100), b"1")
    copies.refresh("k", value(2, 50), b"2")
    assert copies.get("k") == (value(2, 50), b"2") and copies.size == 50
    copies.refresh("k", None, None)  # found nothing: the copy goes too
    assert copies.get("k") is None and copies.size == 0


def test_no_copies_kept_when_turned_off():
    copies = Copies(0)
    copies.keep("k", value(1), b"1")
    assert copies.get("k") is None and len(copies) == 0 and not copies.on


def test_clear_forgets_every_copy():
    copies = Copies(10)
    for n in range(3):
        copies.keep(f"k{n}", value(n), b"1")
    copies.clear()
    assert len(copies) == 0 and copies.size == 0 and copies.get("k0") is None
