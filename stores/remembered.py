"""`Remembered`: a dict bounded by count, for values worth computing once per distinct input."""

from __future__ import annotations

import itertools
from typing import Any


class Remembered(dict[str, Any]):
    """A dict that forgets its oldest entries beyond ``limit`` (insertion order)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def remember(self, key: str, value: Any) -> None:
        if len(self) >= self.limit:
            # Drop the oldest tenth at once, so eviction is rare and cheap.
            for old in list(itertools.islice(iter(self), self.limit // 10 or 1)):
                del self[old]
        self[key] = value
