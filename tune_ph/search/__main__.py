"""`python -m tune_ph.search`: the same as `python -m tune_ph search`.

The search package imports no command (commands/ sits above it): this entry point hands the process to the
top-level dispatcher, as if `python -m tune_ph search ...` had been typed.
"""

import runpy
import sys

sys.argv[1:1] = ["search"]
runpy.run_module("tune_ph", run_name="__main__", alter_sys=True)
