"""`python -m ortserve` is the `ortserve` command."""

import sys

from ortserve.cli import main

sys.exit(main())
