"""Model families and `build_model`, which turns `config.model` into a module.

Every key of `config.model` except `name` is passed verbatim to the chosen
class's constructor, so the config and the constructor signatures must agree:
switching `model.name` to another family means editing the model keys too
(an MLP-only key such as `residual` on a transformer is a TypeError, on purpose,
so that a stale key never silently does nothing).

All models follow one convention, `model(x, *, train=False, rngs=None)` ->
float32 logits, store no RNG state and no batch statistics (only nnx.Param), and
draw dropout randomness from the `dropout` stream of the `rngs` given at call
time, so that training can be functional over `nnx.split(model, nnx.Param)`.
"""

from collections.abc import Mapping
from typing import Any

from flax import nnx

from models.cnn import CNN1D, CNN2D
from models.mlp import MLP
from models.transformer import Transformer

MODELS: dict[str, type[nnx.Module]] = {
  'mlp': MLP,
  'cnn1d': CNN1D,
  'cnn2d': CNN2D,
  'transformer': Transformer,
}


def build_model(
  model_config: Mapping[str, Any],
  *,
  input_shape: tuple[int, ...],
  num_outputs: int,
  rngs: nnx.Rngs,
) -> nnx.Module:
  """Builds the model named by `model_config.name` from its other keys.

  Args:
    model_config: an ml_collections.ConfigDict or a plain mapping with `name`.
    input_shape: the shape of one example, without the batch axis.
    num_outputs: number of classes, or the vocabulary size for the LM.
    rngs: used for parameter initialization only; nothing keeps a reference.

  Raises:
    ValueError: unknown or missing name.
    TypeError: a key the chosen constructor does not accept.
  """
  kwargs = dict(model_config.items())
  name = kwargs.pop('name', None)
  if name not in MODELS:
    raise ValueError(f'Unknown model name {name!r}; known: {sorted(MODELS)}.')
  return MODELS[name](
    **kwargs, input_shape=tuple(input_shape), num_outputs=num_outputs, rngs=rngs
  )
