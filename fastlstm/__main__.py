"""``python -m fastlstm``: the same command as the ``fastlstm`` console script (see cli.py)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
