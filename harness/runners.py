"""How chunks of training steps reach the device: one scan, or one dispatch per step.

Both keep the host out of the inner loop: per-step losses stay on device until the end of
the chunk, so the host syncs once per chunk. `scan` compiles the whole chunk into one
program (least dispatch overhead: good for tiny models and on accelerators). `dispatch`
calls one compiled step per step asynchronously; on XLA:CPU a convolution inside a loop
body runs about 10x slower than the same convolution at top level, so convolutional
models on CPU want `dispatch` (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp

from harness.steps import Program, SeedKeys


def _cost_info(program: Program, compiled, carry, keys: SeedKeys, epoch_state) -> dict[str, Any]:
  """FLOPs of one step (XLA's cost analysis, all seeds) and the compiled memory footprint."""
  lowered_step = jax.jit(program.step).lower(carry, keys, jnp.int32(0), epoch_state)
  cost = lowered_step.cost_analysis() or {}
  info: dict[str, Any] = {'flops_per_step': float(cost.get('flops', math.nan))}
  memory = compiled.memory_analysis()
  if memory is not None:
    info['compiled_bytes'] = {
        'argument': memory.argument_size_in_bytes, 'output': memory.output_size_in_bytes,
        'temp': memory.temp_size_in_bytes, 'alias': memory.alias_size_in_bytes,
        'peak': getattr(memory, 'peak_memory_in_bytes', None)}
  return info


class ChunkRunner:
  """Runs `length` steps from `start`; compiles ahead of time so compile time is measured."""

  def __init__(self, program: Program, keys: SeedKeys, scan: bool):
    self._program, self._keys, self._scan = program, keys, scan
    self._epoch_states = jax.jit(program.epoch_states)
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0
    self.cost_info: dict[str, Any] = {}

  def _compile(self, carry, length: int):
    key = length if self._scan else 0
    if key not in self._compiled:
      start = time.perf_counter()
      epoch_state = self._epoch_states(self._keys.data, jnp.int32(0))
      if self._scan:
        fn = jax.jit(self._program.chunk, static_argnums=3, donate_argnums=0)
        compiled = fn.lower(carry, self._keys, jnp.int32(0), length).compile()
      else:
        fn = jax.jit(self._program.step, donate_argnums=0)
        compiled = fn.lower(carry, self._keys, jnp.int32(0), epoch_state).compile()
      self.compile_seconds += time.perf_counter() - start
      self.cost_info = _cost_info(self._program, compiled, carry, self._keys, epoch_state)
      self._compiled[key] = compiled
    return self._compiled[key]

  def __call__(self, carry, start: int, length: int):
    """Returns the new carry and host copies of the (length, seeds) losses and grad norms."""
    compiled = self._compile(carry, length)
    if self._scan:
      carry, metrics = compiled(carry, self._keys, jnp.int32(start))
      return carry, jax.device_get(metrics)
    steps_per_epoch = self._program.steps_per_epoch
    epoch_state = self._epoch_states(self._keys.data, jnp.int32(start))
    losses, norms = [], []
    for step in range(start, start + length):
      if step % steps_per_epoch == 0:
        epoch_state = self._epoch_states(self._keys.data, jnp.int32(step))
      carry, (loss, norm) = compiled(carry, self._keys, jnp.int32(step), epoch_state)
      losses.append(loss)
      norms.append(norm)
    return carry, jax.device_get((jnp.stack(losses), jnp.stack(norms)))
