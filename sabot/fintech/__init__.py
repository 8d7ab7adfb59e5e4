"""sabot.fintech: streaming financial kernels over Arrow batches (spec: kernels.md)."""
from ._scope import StateScope, current_scope

__all__ = ["StateScope", "current_scope"]
