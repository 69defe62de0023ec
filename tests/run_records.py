"""What two runs of the same seed share: their records apart from the wall-clock fields."""

from __future__ import annotations

from typing import Any


def without_timing(value: Any) -> Any:
    """A run's record without its wall-clock fields (``*_seconds``), which differ between any two runs."""
    if isinstance(value, dict):
        return {key: without_timing(item) for key, item in value.items() if not key.endswith("_seconds")}
    if isinstance(value, list):
        return [without_timing(item) for item in value]
    return value
