"""`python -m crew`."""

import sys

try:
    from crew.terminal.cli import main
except KeyboardInterrupt:  # Ctrl-C while Python starts: nothing began, nothing to save
    sys.exit(130)

sys.exit(main())
