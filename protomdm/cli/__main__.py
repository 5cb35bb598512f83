"""``python -m protomdm.cli``: the ``protomdm`` command."""

import sys

from . import main

sys.exit(main())
