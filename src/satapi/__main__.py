"""`python -m satapi` runs the `satapi` command."""

import gc
import sys

# Start-up imports make ~90,000 objects that live as long as the process; full collections
# among them cost ~20 % of a start. `main()` turns the collector back on (a single server
# process: once its app is ready and has frozen those objects).
gc.disable()

from satapi.cli import main  # noqa: E402

sys.exit(main())
