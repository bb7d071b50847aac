"""``python3 -m mailyard``: the same as the ``mailyard`` command."""

import sys

from mailyard.cli.main import main

sys.exit(main())
