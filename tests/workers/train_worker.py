"""Run by horovodrun in tests: train a few steps, then each rank saves its live parameters."""
import faulthandler
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from recognition import distributed as dist  # noqa: E402
from recognition.engine.config import load_config  # noqa: E402
from recognition.engine.trainer import train  # noqa: E402


def main():
    faulthandler.enable()  # after MXNet's own handler: a crash prints every thread's Python stack
    save_dir, overrides = sys.argv[1], sys.argv[2:]
    resume = "auto" if overrides[:1] == ["--resume"] else None
    config = load_config(None, overrides[1:] if resume else overrides)
    results, net, head = train(config, resume=resume, return_model=True)
    net.save_parameters(str(os.path.join(save_dir, f"net-rank{dist.rank()}.params")))
    head.save_parameters(str(os.path.join(save_dir, f"head-rank{dist.rank()}.params")))
    print(f"rank {dist.rank()} of {dist.size()} done at step {results['steps']}", flush=True)


if __name__ == "__main__":
    main()
