import sys

from middleware.cli.main import main

sys.exit(main())
