"""``python bench/kernels.py ARGS`` runs ``ferrotune bench kernels ARGS`` (see README.md here).

The benchmark lives in ``ferrotune.bench`` so that it runs from an installed wheel.
"""

import sys

from ferrotune.bench.command import script_argv
from ferrotune.cli import main

if __name__ == "__main__":
    sys.exit(main(script_argv(__file__, "kernels")))
