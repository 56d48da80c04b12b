"""`python -m medtrain [verb] [arguments]`: the `medtrain` command (see `medtrain.commands`)."""

import sys

from medtrain.commands import main

if __name__ == "__main__":
    sys.exit(main())
