"""``python -m eventbus.cli``: the ``eventbus`` command without installing it."""

import sys

from eventbus.cli import main

sys.exit(main())
