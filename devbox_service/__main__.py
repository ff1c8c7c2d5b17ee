import sys

from devbox_service.cli import main

sys.exit(main())
