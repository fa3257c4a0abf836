"""`Session`: one browser session as a handler sees it for the length of a request.

Reads come from the record loaded at the start; writes are recorded as operations, applied to
the newest stored record when the request saves (see `handlers.session_manager`).
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, MutableMapping
from typing import Any

from stores.base import Loaded, Operation, applied, is_privileged, json_value

SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")
_ID_BYTES = 32  # 256 bits


def new_session_id() -> str:
    """A fresh 256-bit URL-safe session id."""
    return secrets.token_urlsafe(_ID_BYTES)


class Session(MutableMapping[str, Any]):
    """One browser session for the length of a request: a `MutableMapping` of JSON values.

    Reading: ``session["k"]``, ``session.get("k")``, ``"k" in session``, ``dict(session)``.
    Writing: ``session["k"] = v``, ``del session["k"]``, ``update``, ``pop``, ``setdefault``,
    ``session.increment("k")``; each is recorded as an operation and applied to the newest
    stored record when the request saves, so concurrent requests do not overwrite each other.
    ``regenerate()`` moves the data to a new id; ``destroy()`` ends the session.

    ``privileged``: the session has been regenerated (a login), here or in an earlier request.
    That is all "logged in" means at this layer; it knows nothing of users. A privileged session
    keeps the full idle timeout and is never evicted for an anonymous one.
    """

    __slots__ = (
        "_data",
        "copy",
        "copy_id",
        "created_at",
        "id",
        "loaded",
        "operations",
        "privileged",
        "regenerated",
        "resign",
        "retired_ids",
        "stale_cookie",
        "stored_id",
        "touch_due",
    )

    def __init__(
        self,
        session_id: str | None,
        loaded: Loaded | None,
        *,
        resign: bool = False,
        touch_due: bool = False,
        stale_cookie: bool = False,
    ) -> None:
        # The id the browser will hold after this response; None until one is needed.
        self.id = session_id
        record = loaded.record if loaded is not None else None
        # The id whose record is in the store, or None for a session not stored yet.
        self.stored_id = session_id if record is not None else None
        self.created_at: float | None = record["created_at"] if record else None
        # Shared with the loaded record, not copied: writes replace this dict, never change it.
        self._data: dict[str, Any] = record["data"] if record else {}
        # The record as loaded, with the store's version token, for a cheaper update.
        self.loaded = loaded
        # This process's copy the session was built from, until the store confirms it was current
        # (see `SessionStore.copy`): None for a session loaded from the store.
        self.copy = loaded if loaded is not None and not loaded.confirmed else None
        self.copy_id = session_id if self.copy is not None else None  # whose copy it is
        self.operations: list[Operation] = []
        self.retired_ids: list[str] = []
        self.resign = resign
        self.touch_due = touch_due
        # The request carried a session cookie that was not adopted: clear it unless replaced.
        self.stale_cookie = stale_cookie
        # regenerate() was called (a login): logged as such even when no session existed before.
        self.regenerated = False
        self.privileged = record is not None and is_privileged(record)

    # Reading -------------------------------------------------------------------------------

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default``."""
        return self._data.get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    @property
    def modified(self) -> bool:
        """True if saving would write, delete or create anything."""
        return bool(self.operations or self.retired_ids)

    @property
    def unsaved(self) -> bool:
        """True if saving has anything to do: a write, a touch, or a cookie to re-sign or clear."""
        return bool(self.operations or self.retired_ids or self.touch_due or self.resign or self.stale_cookie)

    # Writing -------------------------------------------------------------------------------

    def _record(self, op: Operation) -> None:
        self.operations.append(op)
        self._data = applied(self._data, (op,))

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str):
            raise TypeError("session keys are strings")
        # A copy as plain JSON: later changes to the caller's object do not leak in, and data
        # JSON cannot hold is refused here (413 from a handler), not altered on the way out.
        self._record(Operation("set", key, json_value(value)))

    def __delitem__(self, key: str) -> None:
        if key not in self._data:
            raise KeyError(key)
        self._record(Operation("delete", key))

    def increment(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to an integer (missing counts as 0); return this request's view of it.

        Concurrent increments on one session all count; the stored total can be higher than the
        value returned here until the session is saved.
        """
        if type(amount) is not int:
            raise TypeError("session increments are integers")
        self._record(Operation("incr", key, amount))
        value: int = self._data[key]
        return value

    def regenerate(self, keep_data: bool = True) -> None:
        """Give the session a new id, keeping its data (or with ``keep_data=False``, none of
        it); the old id stops working on save.

        Call it whenever privilege changes (login), so an id an attacker planted or saw before
        is worthless afterwards.
        """
        if self.stored_id is not None:
            self.retired_ids.append(self.stored_id)
        if not keep_data:
            self._data = {}
        # The kept data becomes the new record's starting point.
        self.operations = [Operation("set", k, v) for k, v in self._data.items()]
        self.stored_id = None
        self.created_at = None
        self.id = new_session_id()
        self.regenerated = True
        self.privileged = True

    def destroy(self) -> None:
        """End the session: its record is deleted and the browser's cookie cleared on save.

        Anything written afterwards starts a new anonymous session.
        """
        if self.stored_id is not None:
            self.retired_ids.append(self.stored_id)
        self.stale_cookie = self.stale_cookie or self.id is not None
        self.stored_id = None
        self.created_at = None
        self.id = None
        self._data = {}
        self.operations = []
        self.privileged = False

    def discard(self) -> None:
        """Drop unsaved changes (used when the request fails)."""
        self.operations = []
        self.retired_ids = []
        self.touch_due = False
