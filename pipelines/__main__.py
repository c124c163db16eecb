"""``python -m pipelines``: same as ``python -m pipelines.compile``."""

import sys

from pipelines.compile import main

sys.exit(main())
