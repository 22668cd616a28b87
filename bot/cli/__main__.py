"""`python -m bot.cli`: the `nightcrew` command (tests run it so)."""

import sys

from bot.cli import main

sys.exit(main())
