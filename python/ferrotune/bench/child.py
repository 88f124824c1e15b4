"""``python -m ferrotune.bench.child MODULE:FUNCTION KWARGS_JSON``: one contender, alone.

A fresh interpreter per contender keeps its resident set and imports its own: the peak memory
measured is the contender's, and no contender runs warm on another's imports or caches. The
function, ``ferrotune.bench.<MODULE>.<FUNCTION>``, returns a JSON-able dict, printed after
``RESULT_TAG`` as the last line for :func:`ferrotune.bench.measure.child_result`, with the
process's own peak resident bytes (``own_peak``).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Sequence

from ferrotune.bench.bare import own_peak
from ferrotune.bench.measure import RESULT_TAG


def main(argv: Sequence[str]) -> int:
    target, kwargs = argv
    module, name = target.split(":")
    function = getattr(importlib.import_module(f"ferrotune.bench.{module}"), name)
    result = function(**json.loads(kwargs))
    print(RESULT_TAG + json.dumps({**result, "own_peak": own_peak()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
