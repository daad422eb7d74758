#!/usr/bin/env python
"""Shim: python tools/ensemble.py --help (the code is recognition/cli/ensemble.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recognition.cli.ensemble import main  # noqa: E402

if __name__ == "__main__":
    main()
