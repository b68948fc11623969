"""`python -m dropout_lab.cli history ...`: the same as the installed `dropout-lab` command."""

import sys

from dropout_lab.cli import main

sys.exit(main())
