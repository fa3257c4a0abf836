"""The page counter: the reference app's ``GET /api``."""

from __future__ import annotations

from handlers.base import SessionHandler

PAGE_VIEWS = "page_views"


class PageCounterHandler(SessionHandler):
    """Counts this browser's visits. An increment, so concurrent visits all count."""

    async def get(self) -> None:
        session = await self.get_session()
        session.increment(PAGE_VIEWS)
        # Save first so the text shows the stored total, not this request's guess.
        await self.save_session()
        views = session[PAGE_VIEWS]
        self.set_header("Content-Type", "text/plain; charset=UTF-8")
        if views == 1:
            self.write("Welcome to this page for the first time!")
        else:
            self.write(f"You visited this page {views} times")
