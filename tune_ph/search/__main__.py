"""`python -m tune_ph.search`: the same as `python -m tune_ph.search`."""

import sys

from tune_ph.commands.search import main

sys.exit(main())
