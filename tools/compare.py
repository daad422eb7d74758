#!/usr/bin/env python
"""Shim: python tools/compare.py --help (the code is recognition/cli/compare.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recognition.cli.compare import main  # noqa: E402

if __name__ == "__main__":
    main()
