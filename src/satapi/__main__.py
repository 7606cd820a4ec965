"""`python -m satapi` runs the `satapi` command."""

import sys

from satapi.cli import main

sys.exit(main())
