"""Per-space actors: live state folded from events as they are stored, supervised."""

from headcount.actors.changes import Cause, Change, ChangeFeed, Subscription, SubscriptionClosed
from headcount.actors.live import Applied, LiveSpace
from headcount.actors.reading import LiveCounts, Readiness, ResetTaker, SpaceRecoveringError
from headcount.actors.space import DEFAULT_WINDOW_MS, SpaceActor
from headcount.actors.system import ActorSystem, RestartBudget, SupervisorError

__all__ = [
    "DEFAULT_WINDOW_MS",
    "ActorSystem",
    "Applied",
    "Cause",
    "Change",
    "ChangeFeed",
    "LiveCounts",
    "LiveSpace",
    "Readiness",
    "ResetTaker",
    "RestartBudget",
    "SpaceActor",
    "SpaceRecoveringError",
    "Subscription",
    "SubscriptionClosed",
    "SupervisorError",
]
