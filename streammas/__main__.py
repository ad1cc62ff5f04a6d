import sys

from streammas.cli import main

sys.exit(main())
