"""``python -m XAICommandLine``: the same as the ``slicer-xai`` command."""

import sys

from XAICommandLine.main import main

sys.exit(main())
