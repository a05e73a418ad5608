"""The command line of ``python -m training.train``: its flags, their defaults and bounds.

Every value is checked while parsing, before TensorFlow loads, so a typo costs a usage line
(exit 2), not a traceback or a run that cannot work. A model's own options and defaults come
from the registry in ``training/model.py``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from training.model import DEFAULT_MODEL, MODELS

# Defaults, each chosen once here; each model's own (layer sizes, dropout, epochs, learning
# rate) are in training/model.py. Together the DNN's reach >= 98% test accuracy in its 3
# epochs on two CPU cores (98.2-98.4%, seeds 0-4; see benchmarks/train_speed.py). The
# benchmark's ceiling and tuned-Keras baselines read these same values.
# Per replica: 256 keeps the two cores busy (234 steps an epoch). 128 also ends >= 98% in 3
# epochs but trains ~0.8x the examples a second; 512 (peak 7e-3) ends below 98% on a seed.
DEFAULT_BATCH_SIZE = 256
# The model options that have a flag; each applies to the models whose builder takes it.
MODEL_OPTIONS = ("first_layer_neurons", "second_layer_neurons", "dropout")
# Of all steps, the rate ramps linearly to its peak (the one-cycle recipe's usual tenth), so
# Adam's first, noisy steps are small; 0.02 to 0.2 all end at 98.2-98.3% after 3 epochs.
WARMUP_FRACTION = 0.1
# Softer targets: better-calibrated probabilities for serving, and a better net in 3 epochs
# (98.2% on seeds 0 and 1; 97.9% and 98.1% without smoothing).
LABEL_SMOOTHING = 0.05

# Bounds the libraries enforce late (after TensorFlow loaded) or not at all: checked while
# parsing instead, so a typo costs a usage line, not a traceback or a run that cannot work.
MAX_SEED = 2**32 - 1  # NumPy and keras.utils.set_random_seed refuse seeds outside [0, 2**32)
MAX_EPOCHS = 10_000
MAX_LEARNING_RATE = 10.0  # Adam diverges long before; float32 overflows past ~3e38
MIN_LEARNING_RATE = 1e-30  # smaller rounds to zero (or a denormal) in float32: nothing learns
MAX_PARAMETERS = 100_000_000  # weights; Adam keeps two more copies: 1.2 GB of float32
TRAIN_EXAMPLES = 60_000  # MNIST's training set (training/data.py verifies the count)


class UsageError(Exception):
    """Flags that parse but cannot work together (e.g. a batch larger than the data)."""


@dataclass(frozen=True)
class Config:
    model: str
    data_folder: str | None
    batch_size: int
    first_layer_neurons: int | None  # None: the model does not take this option
    second_layer_neurons: int | None
    learning_rate: float
    epochs: int
    output_dir: str
    seed: int
    dropout: float | None
    tracking: bool
    restart: bool = False

    def model_options(self) -> dict[str, Any]:
        """The options the model's builder takes, as the flags set them."""
        takes = MODELS[self.model].options()
        return {option: getattr(self, option) for option in MODEL_OPTIONS if option in takes}


def _checked(convert: type, accept: Any, requirement: str) -> Any:
    """An argparse type: ``convert`` the text, then refuse values ``accept`` rejects."""
    noun = "whole number" if convert is int else "number"

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a {noun}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"{text} {requirement}")
        return value

    return parse


_positive_int = _checked(int, lambda v: v >= 1, "must be at least 1")
_epochs = _checked(int, lambda v: 1 <= v <= MAX_EPOCHS, f"must be between 1 and {MAX_EPOCHS}")
_batch = _checked(
    int,
    lambda v: 1 <= v <= TRAIN_EXAMPLES,
    f"must be between 1 and {TRAIN_EXAMPLES} (the MNIST training examples)",
)
_learning_rate = _checked(
    float,
    lambda v: math.isfinite(v) and MIN_LEARNING_RATE <= v <= MAX_LEARNING_RATE,
    f"must be a positive number between {MIN_LEARNING_RATE:g} and {MAX_LEARNING_RATE:g}",
)
_fraction = _checked(float, lambda v: 0 <= v < 1, "must be in [0, 1)")
_seed = _checked(int, lambda v: 0 <= v <= MAX_SEED, f"must be between 0 and {MAX_SEED} (2**32 - 1)")
_folder = _checked(str, lambda v: v.strip() != "", "must name a folder")


def _flag(option: str) -> str:
    return "--" + option.replace("_", "-")


def _defaults_help(value: Any) -> str:
    """``default: dnn 6, cnn 4``: a setting's default for each model that has one."""
    shown = [f"{name} {value(arch)}" for name, arch in MODELS.items() if value(arch) is not None]
    return "default: " + ", ".join(shown)


def _option_help(option: str) -> str:
    return (
        f"a model option ({_defaults_help(lambda arch: arch.options().get(option))}); "
        "refused with any other --model"
    )


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        prog="python -m training.train",
        description="Train an MNIST model; distribution is chosen from the environment.",
    )
    parser.add_argument(
        "--model",
        choices=sorted(MODELS),
        default=DEFAULT_MODEL,
        help="the architecture, from training/model.py's MODELS (default %(default)s)",
    )
    parser.add_argument(
        "--data-folder",
        help="folder with the four MNIST .gz files (default: $MNIST_DATA_DIR, else download)",
    )
    parser.add_argument(
        "--batch-size",
        type=_batch,
        default=DEFAULT_BATCH_SIZE,
        help="examples per replica per step (default %(default)s)",
    )
    for option in ("first_layer_neurons", "second_layer_neurons"):
        parser.add_argument(_flag(option), type=_positive_int, help=_option_help(option))
    parser.add_argument(
        "--learning-rate",
        type=_learning_rate,
        help="peak learning rate for one replica "
        f"({_defaults_help(lambda arch: arch.learning_rate)})",
    )
    parser.add_argument(
        "--epochs",
        type=_epochs,
        help="length of the learning-rate schedule, which reaches zero at the last epoch "
        f"({_defaults_help(lambda arch: arch.epochs)})",
    )
    parser.add_argument(
        "--output-dir",
        type=_folder,
        default="./outputs",
        help="model, metrics, pictures, checkpoints (default %(default)s)",
    )
    parser.add_argument("--seed", type=_seed, default=0, help="0 to 2**32 - 1 (default 0)")
    parser.add_argument("--dropout", type=_fraction, help=_option_help("dropout"))
    parser.add_argument(
        "--no-tracking", dest="tracking", action="store_false", help="do not log to MLflow"
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="discard the checkpoints and history in OUTPUT_DIR/checkpoints and train from "
        "scratch (without it, a rerun resumes, and only with the flags that wrote them)",
    )
    return _with_model_defaults(parser, vars(parser.parse_args(argv)))


def _with_model_defaults(parser: argparse.ArgumentParser, given: dict[str, Any]) -> Config:
    """Fill the flags left unset with the chosen model's defaults; refuse a model option the
    model does not take, and a model too large to train."""
    name = given["model"]
    architecture, takes = MODELS[name], MODELS[name].options()
    foreign = [_flag(o) for o in MODEL_OPTIONS if given[o] is not None and o not in takes]
    if foreign:
        own = ", ".join(_flag(o) for o in MODEL_OPTIONS if o in takes) or "none"
        parser.error(
            f"{' and '.join(foreign)} {'does' if len(foreign) == 1 else 'do'} not apply to "
            f"--model {name} (its options: {own}); leave it out, or choose the model it "
            "belongs to with --model"
        )
    for option in MODEL_OPTIONS:
        if option in takes and given[option] is None:
            given[option] = takes[option]
    if given["epochs"] is None:
        given["epochs"] = architecture.epochs
    if given["learning_rate"] is None:
        given["learning_rate"] = architecture.learning_rate
    config = Config(**given)
    weights = architecture.weights(**config.model_options()) if architecture.weights else 0
    if weights > MAX_PARAMETERS:
        chosen = " ".join(f"{_flag(o)} {v}" for o, v in config.model_options().items())
        parser.error(
            f"--model {name} with {chosen} has {weights:,} weights, more than the "
            f"{MAX_PARAMETERS:,} this script allows (Adam keeps three float32 copies); "
            "choose smaller layers"
        )
    return config
