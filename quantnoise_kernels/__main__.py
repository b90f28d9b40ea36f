"""``python -m quantnoise_kernels``: the ``quantnoise-kernels`` command line (see :mod:`quantnoise_kernels.cli`)."""

import sys

from .cli import main

sys.exit(main())
