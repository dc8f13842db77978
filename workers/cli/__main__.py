"""`python -m workers.cli` is `sdft`."""

import sys

from workers.cli import main

sys.exit(main())
