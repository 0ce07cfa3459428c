import sys

from openseg_r.cli.main import main

sys.exit(main())
