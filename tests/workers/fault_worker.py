"""horovodrun worker for the fault tests: ``tools/train.py`` with one rank that dies.

Usage: fault_worker.py KILL_RANK MARKER [train.py arguments...]

Runs recognition.cli.train.main with the given arguments. On rank KILL_RANK a background thread
waits until the run's first complete checkpoint exists (``output.dir`` is read from the resolved
config), writes the time to MARKER and sends SIGKILL to its own process: a real, unannounced
worker death in the middle of training (no Python exception, no cleanup). KILL_RANK -1 kills
nobody (the resumed run).
"""
import os
import signal
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from recognition.engine import checkpoint  # noqa: E402
from recognition.engine.config import load_config  # noqa: E402


def _rank():
    return int(os.environ.get("HOROVOD_RANK", os.environ.get("OMPI_COMM_WORLD_RANK", "0")))


def _die_after_first_checkpoint(out_dir, marker):
    while not checkpoint.list_states(out_dir):
        time.sleep(0.05)
    with open(marker, "w") as f:
        f.write(f"{time.time()}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def main():
    kill_rank, marker, argv = int(sys.argv[1]), sys.argv[2], sys.argv[3:]
    if _rank() == kill_rank:
        config_path = argv[argv.index("--config") + 1] if "--config" in argv else None
        overrides = argv[argv.index("--set") + 1:] if "--set" in argv else []
        overrides = [item for item in overrides if "=" in item]
        out_dir = load_config(config_path, overrides, check_files=False).output.dir
        threading.Thread(target=_die_after_first_checkpoint, args=(out_dir, marker), daemon=True).start()
    from recognition.cli.train import main as train_main
    train_main(argv)


if __name__ == "__main__":
    main()
