"""`python -m ortserve_client`: the `ortserve-client` command."""

import sys

from ortserve_client.cli import main

sys.exit(main())
