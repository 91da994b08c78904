import sys

from server.core_process.process import main

sys.exit(main())
