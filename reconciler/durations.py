"""Durations as written in desired-state YAML: `90d`, `720h`, `30m`, `45s`, `1d12h`.

Units are days, hours, minutes and seconds, each at most once and in that
order. Bare numbers are refused on purpose: `90` could mean days or seconds.
The same grammar is the `duration` pattern in `schemas/common.schema.json`.
"""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"(?:([0-9]+)d)?(?:([0-9]+)h)?(?:([0-9]+)m)?(?:([0-9]+)s)?")
_EXAMPLES = "use e.g. 90d, 720h, 30m, 45s or 1d12h"


def parse_duration(text: str) -> timedelta:
    """Parse a duration string into a positive timedelta.

    Raises ValueError with a message that shows the accepted forms.
    """
    if not isinstance(text, str):
        raise ValueError(f"{text!r} is not a duration: write a number with a unit ({_EXAMPLES})")
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"{text!r} is not a duration ({_EXAMPLES})")
    days, hours, minutes, seconds = (int(part) if part else 0 for part in match.groups())
    try:
        value = timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds)
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration (at most 999999999d)") from None
    if value <= timedelta(0):
        raise ValueError(f"{text!r} is zero: a duration must be longer than 0s ({_EXAMPLES})")
    return value


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
