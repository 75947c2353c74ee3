"""Whose rows a report covers: one tenant (a user, a team, or a user and their team) or all.

The gateway's reporting routes answer an API key with its own user's and
team's figures only, and an admin key with everyone's. The filter is part of
each query (:meth:`Tenant.usage_filter`, :meth:`Tenant.alert_filter`), so a
report never reads another tenant's rows; ``None`` in place of a tenant means
every row (admins, the command line, the MCP server).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, or_

from state.ledger import Alert, UsageRecord
from state.settings import Settings


@dataclass(frozen=True, slots=True)
class Tenant:
    """A user, a team, or both: the rows of the user, and the rows of the team.

    ``Tenant("alice", "search")`` covers every request alice made and every
    request of team search (her teammates' included); ``Tenant("alice")`` only
    hers; ``Tenant(team="search")`` only the team's.
    """

    user: str | None = None
    team: str | None = None

    def __post_init__(self) -> None:
        """Refuse a tenant that names nobody: it would read as "everyone"."""
        if not self.user and not self.team:
            raise ValueError("a tenant names a user, a team or both")

    def usage_filter(self) -> ColumnElement[bool]:
        """Return the ``WHERE`` clause of this tenant's ledger rows."""
        clauses: list[ColumnElement[bool]] = []
        if self.user:
            clauses.append(UsageRecord.user == self.user)
        if self.team:
            clauses.append(UsageRecord.team == self.team)
        return or_(*clauses)

    def alert_filter(self) -> ColumnElement[bool]:
        """Return the ``WHERE`` clause of the alerts this tenant may see.

        The global budget's alerts (it applies to every request) and the
        tenant's own user's and team's.
        """
        clauses: list[ColumnElement[bool]] = [Alert.scope == "global"]
        if self.user:
            clauses.append(and_(Alert.scope == "user", Alert.scope_key == self.user))
        if self.team:
            clauses.append(and_(Alert.scope == "team", Alert.scope_key == self.team))
        return or_(*clauses)


def tenant_of_run(user: str | None, team: str | None, settings: Settings) -> Tenant | None:
    """Return whose figures a graph run may read from the ledger (the chat's answers).

    With ``ROUTER_API_KEYS`` on, a run's user and team are its key's (the graph
    API writes them into the input), so a key that is not an admin's reads its
    own user's and team's rows only. Without keys, or for an admin, or for an
    in-process run that names nobody: every row.

    Args:
        user: The run's user.
        team: The run's team.
        settings: The settings (the keys and the admins).

    Returns:
        The tenant, or None for every row.
    """
    if not settings.router_api_keys or not user or user in settings.router_admin_users:
        return None
    return Tenant(user, team)
