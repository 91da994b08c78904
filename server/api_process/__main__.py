import sys

from server.api_process.process import main

sys.exit(main())
