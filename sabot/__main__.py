"""``python -m sabot ...``: the same as the ``sabot`` console script."""
import sys

from .cli import main

sys.exit(main())
