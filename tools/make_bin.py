#!/usr/bin/env python
"""Shim: python tools/make_bin.py --help (the code is recognition/cli/make_bin.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recognition.cli.make_bin import main  # noqa: E402

if __name__ == "__main__":
    main()
