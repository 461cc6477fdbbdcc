"""`python -m gudlang ...` is the `gud` command (also what torchrun runs)."""

import sys

from gudlang.cli import main

sys.exit(main())
