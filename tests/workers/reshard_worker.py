"""Run by horovodrun in tests: load a sharded checkpoint written by another number of workers
exactly as the trainer does (rank 0 reads, blocks re-split), then on one fixed batch save each
rank's loss rows, its block's weight gradient, and its block (weight, momentum) before and after
one optimizer step.

Usage: reshard_worker.py OUT [config overrides...]  (output.dir must hold the checkpoint)
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import mxnet as mx  # noqa: E402
import numpy as np  # noqa: E402
from mxnet import autograd, gluon  # noqa: E402

from recognition.data.record import RecordDataset  # noqa: E402
from recognition import distributed as dist  # noqa: E402
from recognition.engine import trainer as training  # noqa: E402
from recognition.engine.config import load_config  # noqa: E402

LR, MOMENTUM, WD = 0.05, 0.9, 5e-4


def fixed_batch(dataset, rank, world, per_rank):
    """The first per_rank x world images in record order; this rank's slice (no flips)."""
    indices = dataset.image_indices[:per_rank * world][rank * per_rank:(rank + 1) * per_rank]
    images, labels = zip(*(dataset.read_image(int(i)) for i in indices))
    return (mx.nd.array(np.stack([im.transpose(2, 0, 1) for im in images]).astype(np.float32)),
            mx.nd.array(np.array(labels, dtype=np.float32)))


def main():
    out, overrides = sys.argv[1], sys.argv[2:]
    config = load_config(None, overrides)
    dist.init()
    rank, world = dist.rank(), dist.size()
    dataset = RecordDataset(config.data.root)
    net, _, head, _ = training.build_network(config, dataset.num_classes, mx.cpu())
    params, local_params = training._split_params(net, head)
    opt = dict(learning_rate=LR, momentum=MOMENTUM, wd=WD)
    trainer = dist.make_trainer(params, "sgd", dict(opt))
    local_trainer = gluon.Trainer(local_params, "sgd", dict(opt), kvstore=None)
    folder, meta = training._resume_state("auto", config.output.dir, net, head, trainer, params,
                                          head.shared_params(), local_trainer)
    loaded_weight = head.weight.data().asnumpy()
    loaded_momentum = local_trainer._updaters[0].states[0].asnumpy()
    data, labels = fixed_batch(dataset, rank, world, 4)
    with autograd.record(train_mode=False):  # inference BatchNorm: the embedding of an image is per image
        loss = head(net(data), labels)
    loss.backward()
    grad = head.weight.grad().asnumpy()
    local_trainer.step(data.shape[0] * world)
    np.savez(f"{out}.rank{rank}.npz", range=np.array([head.start, head.end]), loss=loss.asnumpy(),
             labels=labels.asnumpy(), w_grad=grad, weight=loaded_weight, momentum=loaded_momentum,
             stepped=head.weight.data().asnumpy(), step=np.array([meta["step"]]),
             world_written=np.array([meta["world_size"]]))
    mx.nd.waitall()  # the network's gradients (through the head's collectives) are still in flight
    dist.barrier()
    print(f"rank {rank} of {world}: resumed {folder}", flush=True)


if __name__ == "__main__":
    main()
