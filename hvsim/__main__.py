"""``python -m hvsim``: the same command line as the ``hvsim`` script (not jitted)."""
import sys

from hvsim.cli import main

sys.exit(main())
