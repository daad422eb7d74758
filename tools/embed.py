#!/usr/bin/env python
"""Shim: python tools/embed.py --help (the code is recognition/cli/embed.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recognition.cli.embed import main  # noqa: E402

if __name__ == "__main__":
    main()
