"""State stores for Stream checkpoints (spec stream_and_collectors.md §5, Delivery)."""
from .changelog import KafkaChangelogStore
from .checkpoint import CHECKPOINT_FORMAT, CheckpointError, LocalCheckpointStore

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "KafkaChangelogStore", "LocalCheckpointStore"]
