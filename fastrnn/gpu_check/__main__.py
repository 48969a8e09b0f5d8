"""``python -m fastrnn.gpu_check``: see :mod:`fastrnn.gpu_check`."""

import sys

from .run import main

sys.exit(main())
