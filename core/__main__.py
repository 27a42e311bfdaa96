import sys

from coinfer.cli import main

sys.exit(main())
