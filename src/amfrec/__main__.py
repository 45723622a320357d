"""`python -m amfrec` is `amfrec`, so `torchrun -m amfrec train ...` works the way torchrun users expect."""

import sys

from amfrec.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
