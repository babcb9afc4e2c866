"""`python -m rlr ARGS`: the `rlr` console script (rlr.launch.main), where it is not on PATH."""
import sys

from rlr.launch import main

sys.exit(main())
