import sys

from oomtrace.cli import main

sys.exit(main())
