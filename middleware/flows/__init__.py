"""What happens to a reply, a vote and a verdict, free of HTTP.

Each flow takes parts and values and raises the gateway's own errors; the HTTP
endpoints, the Slack listeners and ``hitl replay`` are thin translations onto them.
What a flow does *after* its commit (wake the learner, wake the outbox, count it) is
handed in as ``Hooks``, built in one place: ``middleware.app.parts``.
"""

from middleware.flows.complaint import ComplaintFlow
from middleware.flows.decision import DecisionFlow
from middleware.flows.hooks import Hooks
from middleware.flows.reply import ChatExchange, ReplyFlow
from middleware.flows.vote import Vote, VoteFlow, VoteReceipt

__all__ = [
    "ChatExchange",
    "ComplaintFlow",
    "DecisionFlow",
    "Hooks",
    "ReplyFlow",
    "Vote",
    "VoteFlow",
    "VoteReceipt",
]
