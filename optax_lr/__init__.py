"""optax_lr: learning-rate methods that tune themselves, as pure optax transformations.

Every method is an ``optax.GradientTransformationExtraArgs`` whose schedule
state lives in a pytree, so a jit-compiled train step fuses the learning-rate
logic with the weight update.
"""

from optax_lr import datasets
from optax_lr import flax_utils
from optax_lr._monitor import apply_updates
from optax_lr._monitor import best_params
from optax_lr._monitor import current_lr
from optax_lr._monitor import observe
from optax_lr._partition import partition_loss
from optax_lr._version import __version__ as __version__
from optax_lr.aalr import aalr
from optax_lr.aslr import aslr
from optax_lr.flax_utils import apply_gradients
from optax_lr.flax_utils import nnx_observe
from optax_lr.flax_utils import nnx_update
from optax_lr.hypergradient import hypergradient_descent
from optax_lr.hypergradient import marthe
from optax_lr.hypergradient import rtho
from optax_lr.newton import newton_lr
from optax_lr.range_test import RangeTestResult
from optax_lr.range_test import lr_range_test
from optax_lr.schedules import cyclic_schedule
from optax_lr.schedules import inverse_time_decay
from optax_lr.schedules import per_epoch
from optax_lr.schedules import sgdr_schedule

__all__ = [
  "RangeTestResult",
  "aalr",
  "apply_gradients",
  "apply_updates",
  "aslr",
  "best_params",
  "current_lr",
  "cyclic_schedule",
  "datasets",
  "flax_utils",
  "hypergradient_descent",
  "inverse_time_decay",
  "lr_range_test",
  "marthe",
  "newton_lr",
  "nnx_observe",
  "nnx_update",
  "observe",
  "partition_loss",
  "per_epoch",
  "rtho",
  "sgdr_schedule",
]
