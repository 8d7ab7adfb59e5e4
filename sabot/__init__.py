"""Sabot: streaming crypto market data with typed Cython kernels over Arrow."""
__version__ = "0.1.0"
