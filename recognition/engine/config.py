"""Experiment configuration: YAML -> validated dataclasses, with ``--set key=value`` overrides.

An unknown key, a value of the wrong type or an impossible value stops with a ConfigError naming
the file and the key, before any work is done.
"""
import dataclasses
import os
import typing
from dataclasses import dataclass, field

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class DataConfig:
    root: str = ""                 # folder with train.rec / train.idx / property
    batch_size: int = 64           # per worker
    num_workers: int = 1           # decoding threads per worker
    prefetch: int = 4              # batches decoded ahead
    flip: bool = True              # random horizontal flip
    color_jitter: float = 0.0      # brightness/contrast/saturation factors in 1 +- x (insightface data_color uses 0.125)
    cutoff: int = 0                # side of the grey square painted on half of the images (insightface data_cutoff)
    scale_jitter: float = 0.0      # zoom in 1 +- x about the centre (a random resized crop of an aligned face)
    rotate: float = 0.0            # rotation in +- degrees
    shift: float = 0.0             # shift in +- pixels
    grayscale: float = 0.0         # probability of a grayscale image
    blur: float = 0.0              # probability of a Gaussian blur (sigma 0.5..1.5)
    jpeg: float = 0.0              # probability of JPEG re-compression (quality 30..90)
    sampler: str = "random"        # random | pk (P identities x K images, for triplet)
    images_per_identity: int = 4   # K of the P x K sampler
    small_identities: str = "replace"  # identities with fewer than K images: replace | skip
    max_bad_records: float = 0.01  # share of corrupt records tolerated before stopping


@dataclass
class ModelConfig:
    name: str = "mobilefacenet"
    embedding_size: int = 0        # 0: the network's default (128 MobileFaceNet, 512 IResNet)
    dropout: float = 0.0
    params: dict = field(default_factory=dict)  # more get_model options, e.g. {scale: 2}, {act: relu}


@dataclass
class LossConfig:
    name: str = "arcface"
    params: dict = field(default_factory=dict)
    sharded: bool = False          # classifier rows split over the Horovod workers (model parallel)
    sample_ratio: float = 1.0      # < 1: Partial FC, a sampled share of each block's classes per step
    label_smoothing: float = 0.0   # eps: target 1 - eps on the label + eps / C on every class


@dataclass
class OptimizerConfig:
    name: str = "sgd"
    lr: float = 0.1                # for a global batch of `lr_batch_size`; scaled linearly
    lr_batch_size: int = 0         # 0: no batch scaling; else lr *= global_batch / lr_batch_size
    momentum: float = 0.9
    wd: float = 5e-4
    schedule: str = "cosine"       # cosine | step | constant
    lr_steps: list = field(default_factory=list)   # step schedule boundaries (optimizer steps)
    lr_factor: float = 0.1
    warmup_steps: int = 0
    clip_gradient: float = 0.0     # 0: off


@dataclass
class TrainConfig:
    max_steps: int = 1000
    seed: int = 0
    log_every: int = 20
    hybridize: bool = True
    deterministic: bool = False    # no data threads, fixed order: resumed == uninterrupted
    max_nonfinite: int = 5         # consecutive non-finite losses/gradients before stopping
    allreduce_groups: int = 1      # Horovod grouped allreduce: 1 group (measured fastest), 0 = per tensor
    threads: int = 0               # OMP threads per worker (0: the environment, OMP_NUM_THREADS); tools/train.py sets it before MXNet starts
    precision: str = "float32"     # bfloat16 (CPU) / float16 (GPU): backbone computed in 16 bits, float32 master weights and loss head
    loss_scale: str = "auto"       # dynamic loss scaling: auto (for float16), dynamic, none
    loss_scale_init: float = 65536.0  # its starting scale (halved on overflow, doubled after 2000 finite steps)
    time_budget_minutes: float = 0.0  # > 0: the schedule is fitted to this wall-clock budget (max_steps from the measured step time)
    ema: float = 0.0               # > 0: decay of the weight average used for verification and exports (e.g. 0.999)
    elastic: bool = False          # under horovodrun --min-np/--max-np: workers may leave and join (README)
    elastic_commit_every: int = 10  # steps between in-memory commits (the most steps a lost host costs)


@dataclass
class VerificationConfig:
    bins: list = field(default_factory=list)
    every: int = 500               # steps; 0: only at the end
    batch_size: int = 64
    flip: str = "sum"


@dataclass
class OutputConfig:
    dir: str = "work_dirs/run"
    checkpoint_every: int = 500    # steps
    keep: int = 2                  # training states kept besides the best
    export_every: int = 0          # 0: export at the end and at each best


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    verification: VerificationConfig = field(default_factory=VerificationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)


CHOICES = {
    "data.sampler": ("random", "pk"),
    "data.small_identities": ("replace", "skip"),
    "optimizer.name": ("sgd", "nag", "adam"),  # MXNet 1.9 has no adamw
    "optimizer.schedule": ("cosine", "step", "constant"),
    "verification.flip": ("sum", "concat", "none"),
    "train.precision": ("float32", "bfloat16", "float16"),
    "train.loss_scale": ("auto", "dynamic", "none"),
}


def _coerce(value, kind, where):
    """Check ``value`` against the dataclass field type (ints are accepted for floats)."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, str):
        try:
            return float(value)  # YAML 1.1 reads "1e-3" (no dot) as a string
        except ValueError:
            pass
    origin = typing.get_origin(kind) or kind
    if origin is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if origin in (int, float) and (isinstance(value, bool) or not isinstance(value, origin)):
        raise ConfigError(f"{where}: expected {origin.__name__}, got {value!r}")
    if origin in (str, list, dict) and not isinstance(value, origin):
        if origin is list and isinstance(value, str):
            return [v for v in value.split(",") if v]  # --set verification.bins=a.bin,b.bin
        raise ConfigError(f"{where}: expected {origin.__name__}, got {value!r}")
    return value


def _fill(instance, values, source, path=""):
    """Set the fields of ``instance`` from ``values``; errors read "SOURCE: section.key: problem"."""
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: {path.rstrip('.') or 'top level'}: expected a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(instance)}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{path}{key}' (known in this section: {', '.join(fields)})")
        current = getattr(instance, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, source, f"{path}{key}.")
        else:
            kind = typing.get_type_hints(type(instance))[key]
            setattr(instance, key, _coerce(value, kind, f"{source}: {path}{key}"))


def parse_override(text):
    """``a.b=value`` -> (['a', 'b'], parsed YAML value)."""
    if "=" not in text:
        raise ConfigError(f"--set {text}: expected key=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw != "" else ""


def nest(path, value):
    for key in reversed(path):
        value = {key: value}
    return value


def validate(config, source, files=True):
    for key, allowed in CHOICES.items():
        section, name = key.split(".")
        value = getattr(getattr(config, section), name)
        if value not in allowed:
            raise ConfigError(f"{source}: {key} must be one of {', '.join(allowed)}, got {value!r}")
    positive = {"data.batch_size": config.data.batch_size, "train.max_steps": config.train.max_steps,
                "verification.batch_size": config.verification.batch_size}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{source}: {key} must be positive, got {value}")
    if not 0 < config.loss.sample_ratio <= 1:
        raise ConfigError(f"{source}: loss.sample_ratio must be in (0, 1], got {config.loss.sample_ratio}")
    if not 0 <= config.loss.label_smoothing < 1:
        raise ConfigError(f"{source}: loss.label_smoothing must be in [0, 1), got {config.loss.label_smoothing}")
    if config.loss.label_smoothing and (config.loss.sharded or config.loss.sample_ratio < 1):
        raise ConfigError(f"{source}: loss.label_smoothing is not available with loss.sharded or "
                          "loss.sample_ratio < 1 (the sharded head)")
    if not 0 <= config.data.color_jitter < 1:
        raise ConfigError(f"{source}: data.color_jitter must be in [0, 1), got {config.data.color_jitter}")
    if config.data.cutoff < 0:
        raise ConfigError(f"{source}: data.cutoff must be 0 (off) or a positive side in pixels, got {config.data.cutoff}")
    if not 0 <= config.data.scale_jitter < 1:
        raise ConfigError(f"{source}: data.scale_jitter must be in [0, 1), got {config.data.scale_jitter}")
    if not 0 <= config.data.rotate <= 180:
        raise ConfigError(f"{source}: data.rotate must be in [0, 180] degrees, got {config.data.rotate}")
    if config.data.shift < 0:
        raise ConfigError(f"{source}: data.shift must be 0 (off) or a positive number of pixels, got {config.data.shift}")
    for key in ("grayscale", "blur", "jpeg"):
        if not 0 <= getattr(config.data, key) <= 1:
            raise ConfigError(f"{source}: data.{key} is a probability in [0, 1], got {getattr(config.data, key)}")
    if config.train.loss_scale_init <= 0:
        raise ConfigError(f"{source}: train.loss_scale_init must be positive, got {config.train.loss_scale_init}")
    if not 0 <= config.train.ema < 1:
        raise ConfigError(f"{source}: train.ema is a decay, 0 (off) <= ema < 1, got {config.train.ema}")
    if config.train.time_budget_minutes < 0:
        raise ConfigError(f"{source}: train.time_budget_minutes must be 0 (off) or positive, "
                          f"got {config.train.time_budget_minutes}")
    if config.optimizer.lr <= 0:
        raise ConfigError(f"{source}: optimizer.lr must be positive, got {config.optimizer.lr}")
    for key, value, low in (("data.images_per_identity", config.data.images_per_identity, 1),
                            ("data.num_workers", config.data.num_workers, 0), ("data.prefetch", config.data.prefetch, 0),
                            ("train.max_nonfinite", config.train.max_nonfinite, 1), ("output.keep", config.output.keep, 1),
                            ("train.log_every", config.train.log_every, 1),
                            ("train.allreduce_groups", config.train.allreduce_groups, 0),
                            ("train.elastic_commit_every", config.train.elastic_commit_every, 1)):
        if value < low:
            raise ConfigError(f"{source}: {key} must be at least {low}, got {value}")
    if not 0 <= config.data.max_bad_records <= 1:
        raise ConfigError(f"{source}: data.max_bad_records is a share of the images, 0..1, got {config.data.max_bad_records}")
    if config.data.sampler == "pk" and config.data.batch_size % config.data.images_per_identity:
        raise ConfigError(f"{source}: data.batch_size {config.data.batch_size} is not divisible by "
                          f"data.images_per_identity {config.data.images_per_identity} (P x K batches)")
    if config.loss.name == "triplet" and config.data.sampler != "pk":
        raise ConfigError(f"{source}: loss triplet needs data.sampler: pk (P identities x K images per batch)")
    if not config.data.root:
        raise ConfigError(f"{source}: data.root is not set (a folder with train.rec/train.idx/property)")
    if files:
        problems = missing_files(config)
        if problems:
            raise ConfigError(f"{source}: {problems[0]}")


def missing_files(config):
    """What the config names that this host cannot see, one message each (the trainer asks every
    host of a multi-node job, since datasets are copied to each node's local disk)."""
    problems = []
    for name in ("train.rec", "train.idx", "property"):
        if not os.path.isfile(os.path.join(config.data.root, name)):
            problems.append(f"data.root {config.data.root}: {name} not found")
            break  # one line for the data: the first file it lacks
    for path in config.verification.bins:
        if not os.path.isfile(path):
            problems.append(f"verification.bins: {path} not found")
    return problems


def read_yaml(path, seen=()):
    """A config file's mapping; ``base: other.yaml`` (relative to the file) is read first and this
    file's keys are merged over it, so a variant config holds only what differs."""
    if path in seen:
        raise ConfigError(f"{path}: 'base' chain loops back to itself")
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping of sections")
    base = values.pop("base", None)
    if base:
        base_values = read_yaml(os.path.join(os.path.dirname(path), base), seen + (path,))
        if "loss" in values and values["loss"].get("name") != base_values.get("loss", {}).get("name"):
            base_values.pop("loss", None)  # another head: the base head's params do not apply
        values = _merge(base_values, values)
    return values


def load_config(path=None, overrides=(), check_files=True, check_paths=True):
    """Read ``path`` (YAML), apply ``overrides`` ("a.b=value"), validate, return a Config.

    ``check_files``: validate at all; ``check_paths``: also that the data and .bin files exist here
    (off under horovodrun, where the trainer checks them on every host and reports them all)."""
    config = Config()
    source = path or "<defaults>"
    if path:
        _fill(config, read_yaml(path), source)
    for text in overrides:
        key, value = parse_override(text)
        if key[:2] == ["loss", "params"] and len(key) > 2:
            config.loss.params = _merge(config.loss.params, nest(key[2:], value))
            continue
        _fill(config, nest(key, value), "--set")
    if check_files:
        validate(config, source, files=check_paths)
    return config


def _merge(base, extra):
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged.get(key, {}), value) if isinstance(value, dict) else value
    return merged


def to_dict(config):
    return dataclasses.asdict(config)
