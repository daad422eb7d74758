"""Weight averaging (``train.ema``): an exponential moving average of the network's parameters,
BatchNorm running statistics included, updated after every optimizer update.

    average <- d * average + (1 - d) * value,   d = min(train.ema, (1 + t) / (10 + t))

at update t (TensorFlow's ExponentialMovingAverage with num_updates: the short memory early on
keeps the first averages from being dominated by the random initial weights). The BatchNorm
statistics are averaged like the weights (as timm's ModelEmaV2 does): they are themselves running
averages of the batches' statistics under weights that move slowly, so their average belongs with
the averaged weights without a recomputation pass. Verification, the best model and the exports
use the averaged network (``applied``); training goes on with the raw weights.
"""
import contextlib

import mxnet as mx

EMA_FILE = "ema.params"  # in a checkpoint folder


class WeightAverage:
    def __init__(self, params, decay):
        self.params = [params[name] for name in sorted(params.keys())]
        self.names = [p.name for p in self.params]
        self.decay, self.updates = float(decay), 0
        self.averages = [p.data().copy() for p in self.params]

    def update(self):
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for average, param in zip(self.averages, self.params):
            average *= d
            average += (1.0 - d) * param.data()

    @contextlib.contextmanager
    def applied(self):
        """The parameters hold the averages inside the block, their own values again after it."""
        own = [p.data().copy() for p in self.params]
        for param, average in zip(self.params, self.averages):
            param.set_data(average)
        try:
            yield
        finally:
            for param, value in zip(self.params, own):
                param.set_data(value)

    def arrays(self):
        """{name: NDArray} for a checkpoint, the update count included."""
        out = dict(zip(self.names, self.averages))
        out["__updates__"] = mx.nd.array([self.updates], dtype="float64")
        return out

    def load_arrays(self, arrays, where):
        missing = [n for n in self.names if n not in arrays]
        if missing or "__updates__" not in arrays:
            raise ValueError(f"{where}: no average of {missing[0] if missing else 'the update count'} "
                             f"(not written with this train.ema network)")
        for average, name in zip(self.averages, self.names):
            average[:] = arrays[name].as_in_context(average.context)
        self.updates = int(arrays["__updates__"].asscalar())

    def numpy_arrays(self):
        """``arrays`` as NumPy, to travel by broadcast_object or sit in an elastic commit."""
        return {k: v.asnumpy() for k, v in self.arrays().items()}

    def load_numpy_arrays(self, arrays, where):
        self.load_arrays({k: mx.nd.array(v, dtype=v.dtype) for k, v in arrays.items()}, where)
