"""sabot.fintech: streaming financial kernels over Arrow batches (spec: kernels.md)."""
from ._scope import StateScope, current_scope
from .asof import AsofJoinKernel, StreamingAsofJoinKernel, asof_join, asof_join_streaming, asof_join_table

__all__ = ["StateScope", "current_scope"]
__all__ += ["asof_join", "asof_join_table", "AsofJoinKernel", "StreamingAsofJoinKernel", "asof_join_streaming"]
