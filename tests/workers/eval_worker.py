"""horovodrun worker for tests/test_eval_horovod.py: distributed evaluate / embed_shared.

Usage: eval_worker.py OUT_JSON NUM_PAIRS NUM_ODD_IMAGES
Every rank writes OUT_JSON.rankR with its evaluate() dict and its embed_shared() result for an
odd number of images (uneven shares across 2 workers).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from eval_tiny_net import build_tiny_net, random_faces  # noqa: E402
from recognition import distributed  # noqa: E402
from recognition.evaluation import embed_shared, evaluate  # noqa: E402


def main():
    out, num_pairs, num_odd = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    assert distributed.init(), "not started by horovodrun"
    net = build_tiny_net(seed=1)
    images = random_faces(2 * num_pairs, seed=2)
    issame = np.random.RandomState(3).rand(num_pairs) < 0.5
    result = evaluate(net, images, issame, batch_size=5, flip="sum", nfolds=10)
    odd, odd_norms = embed_shared(net, random_faces(num_odd, seed=4), batch_size=4, flip="concat")
    with open(f"{out}.rank{distributed.rank()}", "w") as f:
        json.dump({"size": distributed.size(), "result": result,
                   "odd": odd.tolist(), "odd_norms": odd_norms.tolist()}, f)


if __name__ == "__main__":
    main()
