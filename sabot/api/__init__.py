"""sabot.api: the Stream API (spec stream_and_collectors.md §5)."""
from ._ops import StreamOperatorError
from .stream import Stream

__all__ = ["Stream", "StreamOperatorError"]
