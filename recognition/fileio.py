"""Durable, atomic file writes shared by the packer, the checkpoints and the tools."""
import json
import os


def fsync_dir(folder):
    """Make renames inside ``folder`` durable (the directory entry itself is flushed)."""
    fd = os.open(folder or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary name: never a half-written file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path, value, indent=1):
    """Write ``value`` as JSON to ``path`` through a temporary name: never a half-written file."""
    write_text_atomic(path, json.dumps(value, indent=indent) + "\n")


def print_json(value, path=None, indent=1):
    """Print ``value`` as JSON (the benchmarks' output) and, with ``path``, also write it atomically."""
    print(json.dumps(value, indent=indent))
    if path:
        write_json_atomic(path, value, indent=indent)
