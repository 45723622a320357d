"""`python -m amfrec.cli` is `amfrec` (as `python -m amfrec` is)."""

import sys

from amfrec.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
