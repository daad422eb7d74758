"""Horovod or a single process behind one small interface.

Everything that must agree across workers (gradients, AdaCos scale, class centres, mined
triplets) goes through these functions; without ``horovodrun`` they are the identity, so the same
code runs single-process. ``init()`` picks Horovod when it is importable and the process was
started by ``horovodrun`` (or when ``force=True``).
"""
import os
import pickle
import socket

import mxnet as mx

_hvd = None


def launched_by_horovodrun():
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def init(force=False):
    """Initialise Horovod when running under horovodrun; returns True when distributed."""
    global _hvd
    if _hvd is not None:
        return True
    if not (force or launched_by_horovodrun()):
        return False
    import horovod.mxnet as hvd
    hvd.init()
    _hvd = hvd
    return True


def reinit():
    """Shut Horovod down and start it again (Horovod's elastic reset: the workers rendezvous anew
    and get their ranks in the new set)."""
    _hvd.shutdown()
    _hvd.init()
    del _hosts[:]


def is_distributed():
    return _hvd is not None


def horovod():
    """The ``horovod.mxnet`` module, or None when single-process."""
    return _hvd


def rank():
    return _hvd.rank() if _hvd else 0


def size():
    return _hvd.size() if _hvd else 1


def local_rank():
    return _hvd.local_rank() if _hvd else 0


def allreduce_sum(array, name=None):
    """Sum of ``array`` (NDArray) over all workers."""
    if _hvd is None or _hvd.size() == 1:
        return array
    return _hvd.allreduce(array, average=False, name=name)


def allreduce_mean(array, name=None):
    if _hvd is None or _hvd.size() == 1:
        return array
    return _hvd.allreduce(array, average=True, name=name)


def allgather(array, name=None):
    """Concatenation along axis 0 of every worker's ``array`` in rank order."""
    if _hvd is None or _hvd.size() == 1:
        return array
    return _hvd.allgather(array, name=name)


def broadcast(array, root_rank=0, name=None):
    if _hvd is None or _hvd.size() == 1:
        return array
    return _hvd.broadcast(array, root_rank=root_rank, name=name)


def broadcast_parameters(params, root_rank=0):
    """Make every worker hold rank ``root_rank``'s values of a ParameterDict.

    Not ``hvd.broadcast_parameters``: its in-place broadcast into oneDNN-backed weights leaves
    arrays that later make the convolution gradients unreadable ("can't generate TBlob for MKLDNN
    data"). Broadcasting a plain copy and setting it back avoids that.
    """
    if _hvd is None or _hvd.size() == 1:
        return
    for name in sorted(params.keys()):
        param = params[name]
        value = mx.nd.array(param.data().asnumpy(), dtype=param.dtype)
        param.set_data(_hvd.broadcast(value, root_rank=root_rank, name=f"param.{name}"))


def trainer_states(trainer):
    """The optimizer's state (momentum and the like, update counts, hyper-parameters) as the
    pickled bytes ``Trainer.save_states`` writes."""
    return trainer._updaters[0].get_states(dump_optimizer=True)


def set_trainer_states(trainer, data, loads=pickle.loads, source="trainer states"):
    """Apply ``trainer_states`` bytes as ``Trainer.load_states`` applies a file's. ``loads``
    unpickles them, once per updater (each device keeps arrays of its own, as
    ``Updater.set_states`` gives); a file from elsewhere passes the restricted unpickler here."""
    if not trainer._kv_initialized:
        trainer._init_kvstore()
    if trainer._params_to_init:
        trainer._init_params()
    if trainer._update_on_kvstore:  # never ours (make_trainer): the kvstore would keep the state
        raise ValueError(f"{source}: cannot be loaded into a trainer that updates on a kvstore")
    for updater in trainer._updaters:
        states = loads(data)
        if isinstance(states, tuple) and len(states) == 2:  # saved with the optimizer
            updater.states, updater.optimizer = states
        else:
            updater.states = states
        updater.states_synced = dict.fromkeys(updater.states.keys(), False)
        updater.optimizer = trainer._updaters[0].optimizer
    trainer._optimizer = trainer._updaters[0].optimizer
    trainer._optimizer.param_dict = dict(enumerate(trainer._params))


def broadcast_trainer_states(trainer, root_rank=0):
    """Make every worker's optimizer rank ``root_rank``'s: after a resume that only that rank read
    from its disk, or an elastic reset."""
    if _hvd is None or _hvd.size() == 1:
        return
    data = trainer_states(trainer) if rank() == root_rank else None
    data = _hvd.broadcast_object(data, root_rank=root_rank, name="trainer.states")
    if rank() != root_rank:
        set_trainer_states(trainer, data)


def average_running_stats(params):
    """Average BatchNorm running means/variances over workers (each rank's are from its own
    batches) so every rank verifies, saves and exports the same network."""
    if _hvd is None or _hvd.size() == 1:
        return
    for name in sorted(params.keys()):
        if name.endswith(("running_mean", "running_var")):
            param = params[name]
            value = mx.nd.array(param.data().asnumpy(), dtype=param.dtype)
            averaged = _hvd.allreduce(value, average=True, name=f"stats.{name}")
            averaged.wait_to_read()  # Horovod ops are asynchronous
            param.set_data(averaged)


def hostname():
    return socket.gethostname()


def where():
    """'rank R on HOST' of this process, for messages of a multi-host job."""
    return f"rank {rank()} on {hostname()}"


_hosts = []


def hosts():
    """Every rank's hostname, in rank order (collective the first time, when distributed)."""
    if not _hosts:
        _hosts.extend(allgather_object(hostname(), name="hostnames"))
    return _hosts


def allgather_object(obj, name=None):
    """The list of every worker's ``obj`` (picklable), in rank order."""
    if _hvd is None or _hvd.size() == 1:
        return [obj]
    return _hvd.allgather_object(obj, name=name)


def broadcast_object(obj, root_rank=0, name=None):
    if _hvd is None or _hvd.size() == 1:
        return obj
    return _hvd.broadcast_object(obj, root_rank=root_rank, name=name)


_barriers = [0]


def barrier():
    """Return only when every worker has reached the same barrier (waits on the result: Horovod
    ops are asynchronous; each barrier has its own name since names must not overlap in flight)."""
    if _hvd is not None and _hvd.size() > 1:
        _barriers[0] += 1
        _hvd.allreduce(mx.nd.zeros((1,)), name=f"barrier.{_barriers[0]}").asnumpy()


def make_trainer(params, optimizer, optimizer_params, allreduce_groups=1):
    """``hvd.DistributedTrainer`` when distributed (gradients averaged over the global batch),
    else ``gluon.Trainer``; both are stepped with the local batch size. ``allreduce_groups``:
    Horovod's grouped allreduce (1 = every gradient in one group; 0 = one allreduce per
    parameter, left to tensor fusion); one group measured faster (bench/horovod_scaling.py)."""
    if _hvd is not None:
        return _hvd.DistributedTrainer(params, optimizer, optimizer_params, num_groups=allreduce_groups)
    return mx.gluon.Trainer(params, optimizer, optimizer_params, kvstore=None)
