"""``python -m benchmarks.minilm [--quick]``: the MiniLM demo (see :mod:`benchmarks.minilm.demo`)."""

import sys

from benchmarks.minilm.demo import main

sys.exit(main())
