"""Dynamic loss scaling for float16 training (the scheme of MXNet's AMP and PyTorch's GradScaler).

float16 gradients below about 6e-8 flush to zero. The loss is multiplied by ``scale`` before the
backward pass, so the gradients are too, and the optimizer divides them again (the trainer passes
``batch_size * scale`` to ``Trainer.update``, which is exact for powers of two). When the scaled
gradients overflow (inf/nan), the step is skipped and the scale halved; after ``growth_interval``
finite steps in a row it doubles, to stay as high as the gradients allow.
"""


class DynamicLossScaler:
    def __init__(self, init_scale=2.0 ** 16, growth_interval=2000, factor=2.0, min_scale=1.0):
        if init_scale <= 0 or factor <= 1 or growth_interval < 1 or min_scale <= 0:
            raise ValueError("loss scaling needs init_scale > 0, factor > 1, growth_interval >= 1, min_scale > 0")
        self.scale = float(init_scale)
        self.growth_interval, self.factor, self.min_scale = growth_interval, factor, min_scale
        self.finite_in_row = 0

    def update(self, finite):
        """After a step whose scaled gradients were ``finite`` (or not): adjust the scale."""
        if not finite:
            self.scale = max(self.scale / self.factor, self.min_scale)
            self.finite_in_row = 0
            return
        self.finite_in_row += 1
        if self.finite_in_row >= self.growth_interval:
            self.scale *= self.factor
            self.finite_in_row = 0

    @property
    def at_minimum(self):
        """True when the scale cannot shrink further: an overflow now is a real divergence."""
        return self.scale <= self.min_scale

    def state_dict(self):
        return {"scale": self.scale, "finite_in_row": self.finite_in_row}

    def load_state_dict(self, state):
        self.scale = float(state["scale"])
        self.finite_in_row = int(state["finite_in_row"])
