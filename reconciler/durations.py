"""Durations as written in desired-state YAML: `90d`, `720h`, `30m`, `45s`, `1d12h`.

Units are days, hours, minutes and seconds, each at most once and in that
order. Bare numbers are refused on purpose: `90` could mean days or seconds.
The same grammar is the `duration` pattern in `schemas/common.schema.json`.

A duration is at most `MAX_DURATION` (100 years, `36500d`): a longer one is
never meant, and `now + duration` past year 9999 would overflow `datetime`.
The schema refuses absurd lengths early; this parser enforces the exact cap.
"""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_EXAMPLES = "use e.g. 90d, 720h, 30m, 45s or 1d12h"

MAX_DURATION = timedelta(days=36500)
_MAX_SECONDS = int(MAX_DURATION.total_seconds())


def parse_duration(text: str) -> timedelta:
    """Parse a duration string into a positive timedelta of at most MAX_DURATION.

    Raises ValueError with a message that shows the accepted forms or the cap.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration: write a number with a unit ({_EXAMPLES})")
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration ({_EXAMPLES})")
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    # Plain integers first: timedelta(days=...) itself overflows past 999999999d.
    total = days * 86400 + hours * 3600 + minutes * 60 + seconds
    if total > _MAX_SECONDS:
        raise ValueError(f"{text!r} is too long: a duration is at most 100 years (36500d)")
    if total <= 0:
        raise ValueError(f"{text!r} is zero: a duration must be longer than 0s ({_EXAMPLES})")
    return timedelta(seconds=total)


def format_duration(value: timedelta) -> str:
    """The shortest duration string for `value` (whole seconds), e.g. `1d12h`, `0s`."""
    total = int(value.total_seconds())
    sign = "-" if total < 0 else ""
    total = abs(total)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        amount, total = divmod(total, size)
        if amount:
            parts.append(f"{amount}{unit}")
    return sign + ("".join(parts) or "0s")
