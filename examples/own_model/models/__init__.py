"""The models experiments can name, and `build_model`, which the harness calls.

Register each Flax NNX module in MODELS under the name a config's `model.name` gives it,
imported as `from models.<file> import <Class>` (the agent reads that line to find the
class's source). Every key of `config.model` but `name` is passed to the constructor, with
`input_shape`, `num_outputs` and `rngs`; the model is called as
`model(x, *, train=False, rngs=None)` and returns float32 logits.
"""

from collections.abc import Mapping
from typing import Any

from flax import nnx

from models.resmlp import ResidualMLP

MODELS: dict[str, type[nnx.Module]] = {'resmlp': ResidualMLP}


def build_model(model_config: Mapping[str, Any], *, input_shape: tuple[int, ...],
                num_outputs: int, rngs: nnx.Rngs) -> nnx.Module:
  kwargs = dict(model_config.items())
  name = kwargs.pop('name', None)
  if name not in MODELS:
    raise ValueError(f'Unknown model name {name!r}; known: {sorted(MODELS)}.')
  return MODELS[name](**kwargs, input_shape=tuple(input_shape), num_outputs=num_outputs,
                      rngs=rngs)
