"""Calendar windows in ``BUDGET_TIMEZONE``: the one place days and months are computed.

A budget's day runs from local midnight to the next, its month from the 1st to
the 1st of the next month; ``/stats`` reports the same two windows, and the
usage report, the dashboard and the MCP tools cover ranges of whole local days
or the last ``N`` days back from now. Bounds are local, aware datetimes;
queries compare them with the ledger's UTC timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo


@dataclass(frozen=True, slots=True)
class CalendarWindows:
    """Today and this month around a moment: local, aware bounds ``[start, end)``."""

    day_start: datetime
    day_end: datetime
    month_start: datetime
    month_end: datetime

    @property
    def day_key(self) -> str:
        """Name the day window, e.g. ``2026-03-08`` (the budget counters' key)."""
        return self.day_start.date().isoformat()

    @property
    def month_key(self) -> str:
        """Name the month window, e.g. ``2026-03`` (the budget counters' key)."""
        return f"{self.month_start.year:04d}-{self.month_start.month:02d}"


def calendar_windows(now: datetime, zone: tzinfo) -> CalendarWindows:
    """Return the local day and month that hold ``now`` in ``zone``.

    Args:
        now: An aware moment.
        zone: The budgets' time zone (``Settings.zone``).

    Returns:
        The day's and the month's bounds, local and aware.
    """
    local = now.astimezone(zone)
    day_start = local.replace(hour=0, minute=0, second=0, microsecond=0)
    # +2 h then back to midnight: right across a daylight-saving change
    day_end = (day_start + timedelta(days=1, hours=2)).replace(hour=0)
    month_start = day_start.replace(day=1)
    month_end = (month_start + timedelta(days=32)).replace(day=1)
    return CalendarWindows(day_start, day_end, month_start, month_end)


def last_days(now: datetime, zone: tzinfo, days: int) -> tuple[datetime, datetime, list[date]]:
    """Return the range of the last ``days`` local calendar days, today included.

    Args:
        now: An aware moment.
        zone: The budgets' time zone.
        days: How many days, today included (at least 1).

    Returns:
        ``(start, end, dates)``: the first day's local midnight, now (at least a
        microsecond after the start), and each day's date, oldest first.
    """
    today = now.astimezone(zone).date()
    first = today - timedelta(days=days - 1)
    start = datetime.combine(first, time.min, tzinfo=zone)
    end = max(now, start + timedelta(microseconds=1))
    return start, end, [first + timedelta(days=i) for i in range(days)]


def trailing_days(now: datetime, days: int) -> tuple[datetime, datetime]:
    """Return ``[now - days, now)``: the last ``days`` times 24 hours."""
    return now - timedelta(days=days), now


def as_utc(moment: datetime) -> datetime:
    """Return a ledger timestamp as an aware UTC datetime (SQLite hands back naive ones)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def local_date(moment: datetime, zone: tzinfo) -> date:
    """Return the local calendar day in ``zone`` of a ledger timestamp."""
    return as_utc(moment).astimezone(zone).date()


def _midnight(day: date, zone: tzinfo) -> datetime:
    return datetime.combine(day, time.min, tzinfo=zone)


def named_period(
    now: datetime, zone: tzinfo, *, period: str | None = None, days: int | None = None
) -> tuple[datetime, datetime, str]:
    """Return the bounds and a label of a period people name, in ``zone``.

    Args:
        now: An aware moment.
        zone: The budgets' time zone.
        period: ``today``, ``yesterday``, ``this week``, ``last week`` (weeks start
            on Monday), ``this month`` or ``last month``; None for ``days``.
        days: The last ``days`` times 24 hours (7 when neither is given).

    Returns:
        ``(start, end, label)``, local and aware.
    """
    windows = calendar_windows(now, zone)
    today = windows.day_start.date()
    monday = _midnight(today - timedelta(days=today.weekday()), zone)
    if period == "today":
        return windows.day_start, now, "today"
    if period == "yesterday":
        return _midnight(today - timedelta(days=1), zone), windows.day_start, "yesterday"
    if period == "this week":
        return monday, now, "this week"
    if period == "last week":
        return _midnight(monday.date() - timedelta(days=7), zone), monday, "last week"
    if period == "this month":
        return windows.month_start, now, "this month"
    if period == "last month":
        previous = calendar_windows(windows.month_start - timedelta(hours=1), zone)
        return previous.month_start, windows.month_start, "last month"
    count = days or 7
    start, end = trailing_days(now, count)
    return start, end, f"the last {count} day{'s' if count != 1 else ''}"
