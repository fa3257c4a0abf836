"""Health probes: ``/livez`` (the process answers) and ``/readyz`` (the store answers too)."""

from __future__ import annotations

from handlers.base import ApiError, JsonHandler, store_unavailable


class LivenessHandler(JsonHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})

    # Load balancers often probe with HEAD: the same answer, without its body.
    head = get


class ReadinessHandler(JsonHandler):
    async def get(self) -> None:
        if not await self.app.store.ready():
            raise store_unavailable()
        self.write_json({"status": "ready"})

    head = get


class NotFoundHandler(JsonHandler):
    """Every unrouted path: a JSON 404, whatever the method."""

    def prepare(self) -> None:
        raise ApiError(404, "Not found.")
