"""``python -m benchmarks [--quick] [--only NAMES] [--out DIR] [--no-progress]``: the runner of
the suite (``benchmarks.runner``), run from the checkout root."""

import sys

from benchmarks.runner import main

sys.exit(main())
