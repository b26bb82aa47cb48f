"""`python -m sauce_jax.cli`, the same as the `sauce-jax` script."""

import sys

from . import main

sys.exit(main())
