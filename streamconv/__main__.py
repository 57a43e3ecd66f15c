"""`python -m streamconv ...` is the `streamconv` command."""

import sys

from streamconv.cli import main

sys.exit(main())
