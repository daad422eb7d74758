#!/usr/bin/env python
"""Shim: python tools/eval_ijb.py --help (the code is recognition/cli/eval_ijb.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recognition.cli.eval_ijb import main  # noqa: E402

if __name__ == "__main__":
    main()
