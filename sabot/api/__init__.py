"""sabot.api: the Stream API (lazy pipelines of Arrow batches over Kafka, Parquet and tables)."""
from ._ops import StreamOperatorError
from .stream import Stream

__all__ = ["Stream", "StreamOperatorError"]
