"""``python -m fastlstm``: the same command as the ``fastlstm`` console script (see charlm/cli.py)."""

import sys

from .charlm.cli import main

if __name__ == "__main__":
    sys.exit(main())
