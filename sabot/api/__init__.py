"""sabot.api: the Stream API (lazy pipelines of Arrow batches over Kafka, Parquet and tables)."""
from ._ops import StreamOperatorError
from ._runtime import UncheckpointedStateError
from .app import Application
from .stream import Stream

__all__ = ["Application", "Stream", "StreamOperatorError", "UncheckpointedStateError"]
