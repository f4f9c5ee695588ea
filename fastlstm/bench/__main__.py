"""`python -m fastlstm.bench`: the comparison grid against PyTorch (see grid.py; --options: options.py)."""

from .grid import main

main()
