"""State stores for Stream checkpoints: local checkpoint files and Kafka changelog records, both
in one versioned, data-only format (:mod:`sabot.state.codec`)."""
from .changelog import KafkaChangelogStore
from .checkpoint import CHECKPOINT_FORMAT, LocalCheckpointStore
from .codec import STATE_FORMAT_VERSION, STATE_KEY_ENV, CheckpointError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "KafkaChangelogStore", "LocalCheckpointStore",
           "STATE_FORMAT_VERSION", "STATE_KEY_ENV"]
