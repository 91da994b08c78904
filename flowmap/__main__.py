import sys

from flowmap.cli import main

sys.exit(main())
