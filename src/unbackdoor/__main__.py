"""`python -m unbackdoor` = the `unbackdoor` console script."""

import sys

from unbackdoor.cli import main

sys.exit(main())
