"""`python -m spin_cache.cli ...` is `spin-cache ...`."""

import sys

from .main import main

sys.exit(main())
