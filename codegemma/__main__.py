import sys

from codegemma.cli import main

sys.exit(main())
