"""``python -m cign_fast.cli`` (and ``torchrun -m cign_fast.cli``) runs the ``cign-fast`` command."""

import sys

from cign_fast.cli import main

sys.exit(main())
