#!/usr/bin/env python
"""Shim: python tools/rec_info.py --help (the code is recognition/cli/rec_info.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recognition.cli.rec_info import main  # noqa: E402

if __name__ == "__main__":
    main()
