"""``python bench/prep_sft.py ARGS`` runs ``ferrotune bench prep sft ARGS`` (see README.md here).

The benchmark lives in ``ferrotune.bench`` so that it runs from an installed wheel.
"""

import sys

from ferrotune.bench.command import run_script

if __name__ == "__main__":
    sys.exit(run_script(__file__, "prep", "sft"))
