"""``python -m corral.supervisor``: the command the launcher starts (see DESIGN)."""

import sys

from corral.daemon import main

sys.exit(main())
