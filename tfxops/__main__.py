"""``python -m tfxops``: the same as the ``tfxops`` command."""
import sys

from tfxops.cli import main

sys.exit(main())
