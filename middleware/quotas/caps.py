"""The review policy's absolute limits, held for the fleet: the hourly review cap and
each end user's asks per hour."""

from __future__ import annotations

from middleware.errors import QuotaUnavailable
from middleware.quotas.port import Quotas

REVIEWS, ASKS = "reviews", "asks"
HOUR = 3600


class FleetCaps:
    """Claims on the fleet's shared counts. A claim is True when it was counted; False
    when the limit is used up *or the counters could not answer*: fail closed, so an
    outage means fewer reviews and asks, never more. (Holds claim nothing: the budget
    never limits them.)

    Only the absolute counts are shared. The budget's share of recent decisions and its
    running quantile stay per process: a share that every process keeps of its own
    decisions is kept by the union of them.
    """

    def __init__(
        self, quotas: Quotas, *, reviews_per_hour: int, asks_per_user_per_hour: int
    ) -> None:
        self.quotas = quotas
        self.reviews_per_hour = reviews_per_hour
        self.asks_per_user_per_hour = asks_per_user_per_hour

    async def review(self) -> bool:
        """A slot of the fleet's ``max_reviews_per_hour``."""
        return await self._claim(REVIEWS, "fleet", self.reviews_per_hour)

    async def ask(self, user: str) -> bool:
        """One of ``user``'s ``ask_per_user_per_hour``, whichever process asks."""
        return await self._claim(ASKS, user, self.asks_per_user_per_hour)

    async def _claim(self, name: str, key: str, limit: int) -> bool:
        try:
            return await self.quotas.take(name, key, limit=limit, window_s=HOUR) is None
        except QuotaUnavailable:
            return False  # logged once per outage by the guard
