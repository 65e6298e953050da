import sys

from metering.tools.cli import main

sys.exit(main())
