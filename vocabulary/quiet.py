"""A shop's quiet hours: the local time window its weekly full pull waits for."""

from __future__ import annotations

import re
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

_WINDOW = re.compile(r"([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)")


def parse_window(text: str) -> tuple[time, time]:
    """(start, end) from "HH:MM-HH:MM"; a window may cross midnight (22:00-05:00)."""
    match = _WINDOW.fullmatch(text.strip())
    if match is None or match.group(1, 2) == match.group(3, 4):
        raise ValueError(f"{text!r}: give quiet hours as HH:MM-HH:MM on a 24-hour clock, "
                         "start and end different (e.g. 01:00-06:00)")
    hour, minute, end_hour, end_minute = (int(part) for part in match.groups())
    return time(hour, minute), time(end_hour, end_minute)


def seconds_until_quiet(now: datetime, window: tuple[time, time], zone: ZoneInfo) -> float:
    """0 when `now` is within the window, else the seconds until it next opens."""
    start, end = window
    local = now.astimezone(zone)
    moment = local.time().replace(tzinfo=None)
    inside = start <= moment < end if start < end else (moment >= start or moment < end)
    if inside:
        return 0.0
    opens = datetime.combine(local.date(), start, tzinfo=zone)
    if opens <= local:
        opens = datetime.combine(local.date() + timedelta(days=1), start, tzinfo=zone)
    return max(0.0, (opens - local).total_seconds())
