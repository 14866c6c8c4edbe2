"""`python -m backends.image`: the image tool's command line (backends/image/build.py)."""

from __future__ import annotations

import sys

from backends.image.build import main

if __name__ == "__main__":
    sys.exit(main())
