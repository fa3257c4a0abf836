"""The account area: ``GET /api/balance``."""

from __future__ import annotations

from handlers.auth import AuthenticatedHandler


class BalanceHandler(AuthenticatedHandler):
    async def get(self) -> None:
        user = await self.require_user()
        self.write_json({"balance": user.balance})
