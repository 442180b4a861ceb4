"""Record a vote: an end user's thumbs up or down on one reply.

One vote per reply and voter, last vote wins (but a vote without a comment keeps the
one written before it: ``feedback_store.exchanges.vote``). The vote and its label are committed in
one store job before the caller answers; only then is the learner woken and, for a
thumbs-down with a comment, a review considered. The comment and correction are stored
masked (``[privacy] redact``); a blank one is none.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from feedback_store import Store
from middleware.errors import InvalidToken, UnknownReply, store_errors
from middleware.flows.complaint import ComplaintFlow
from middleware.flows.hooks import Hooks
from middleware.review.privacy import Redactor
from middleware.scoring.tokens import TokenSigner
from middleware.vocabulary import Rating, Reason

log = logging.getLogger("hitl.feedback")


@dataclass(frozen=True, slots=True)
class Vote:
    reply_id: str
    token: str
    rating: Rating
    reason: Reason | None = None
    comment: str | None = None
    correction: str | None = None


@dataclass(frozen=True, slots=True)
class VoteReceipt:
    reply_id: str
    rating: Rating
    #: a new vote (False: the same voter changed or repeated theirs)
    created: bool


def voter_of(end_user: str | None) -> str:
    """Who a vote counts as: the reply's end user when the request named one."""
    return f"user:{end_user}" if end_user else "user"


class VoteFlow:
    def __init__(
        self,
        *,
        store: Store,
        signer: TokenSigner,
        user_weight: float,
        complaints: ComplaintFlow,
        hooks: Hooks,
        redact: Redactor | None = None,
    ) -> None:
        self.store = store
        self.signer = signer
        self.user_weight = user_weight
        self.complaints = complaints
        self.hooks = hooks
        self.redact = redact or Redactor(())

    async def __call__(self, vote: Vote) -> VoteReceipt:
        """Commit ``vote``. Raises ``InvalidToken``, ``UnknownReply`` or ``StoreUnavailable``."""
        # A wrong token is refused whether or not the reply exists, so ids can't be probed.
        if not self.signer.verify(vote.reply_id, vote.token):
            raise InvalidToken("the feedback token does not match this reply", param="token")
        comment = self.redact.optional(vote.comment or None)
        with store_errors("the vote could not be stored"):
            result = await self.store.vote(
                reply_id=vote.reply_id,
                voter=voter_of,
                rating=vote.rating,
                reason=vote.reason,
                comment=comment,
                correction=self.redact.optional(vote.correction or None),
                weight=self.user_weight,
            )
        if not result.found:
            raise UnknownReply(vote.reply_id, param="reply_id")
        if result.label_id is not None:
            self.hooks.label_committed()
        self.hooks.rated(vote.rating, "user")
        await self.complaints(vote.reply_id, vote.rating, comment)
        return VoteReceipt(vote.reply_id, vote.rating, result.created)
