"""How K seeds' training reaches the device: the layout of seeds, and chunks of steps.

A run trains one or several members, each a (seed, traced hyperparameters) pair: K seeds
of one config, or K seeds of each of B candidates that differ only in the optimiser's
traced values (harness.optimizers.TRACED). Every member runs the same compiled program;
the values live in its optimiser state. Below, "seeds" means members.

Seeds. On accelerators K seeds are one `jax.vmap` over the leading axis of the parameters,
optimiser state and keys: one program, one call per chunk or step. On CPU one seed's
program is compiled once and called once per seed: XLA:CPU picks matmul and convolution
kernels and reduction orders by shape, so inside a vmapped group a seed trained differently
for different K (MNIST-1D MLP seed 0: val accuracy 0.64 at K=1, 0.65 at K=5), and it runs a
vmapped convolution as a grouped convolution, slower than K separate ones. Calls are
asynchronous: the host queues every seed's call before it waits, and idle cores run them
side by side (2 cores, lightly loaded: 5 seeds' training cost 3.5x one seed's for the
MNIST-1D MLP, as vmapped, and 3.6x for the 1-D CNN, vmapped 6.3x). On CPU a seed's result
is bit-identical whatever K and its place among the seeds.

Chunks. Both ways keep the host out of the inner loop: per-step losses stay on device until
the end of the chunk, so the host syncs once per chunk. `scan` compiles the whole chunk into
one program (least dispatch overhead: good for tiny models and on accelerators). `dispatch`
calls one compiled step per step asynchronously; on XLA:CPU a convolution inside a loop
body runs about 10x slower than the same convolution at top level, so convolutional
models on CPU want `dispatch` (measured in BENCHMARKS.md).
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from harness import hosts, mesh
from harness.steps import Carry, Program, SeedKeys, predict_batches

# The training state as the runner holds it: one carry per program call (each member's on
# CPU, all members stacked when vmapped). `SeedRunner.stacked` gives the (M, ...) form.
Carries = list[Carry]


def vmap_seeds() -> bool:
  """Whether K seeds are one vmapped program (accelerators) or one program per seed (CPU)."""
  return jax.default_backend() != 'cpu'


class SeedRunner:
  """Initialises, trains and predicts K seeds; compiles ahead of time so compile time is
  measured apart from training."""

  def __init__(self, program: Program, keys: SeedKeys, hyperparams: dict[str, np.ndarray],
               scan: bool, vmapped: bool, layout: mesh.Layout | None = None):
    """`keys` and each of `hyperparams` have one row per member; with a `layout` the
    members are one vmapped program sharded over its devices."""
    self._program, self._scan = program, scan
    self._vmapped, self._layout = vmapped or layout is not None, layout
    vmapped = self._vmapped
    num_seeds = keys.init.shape[0]
    hyperparams = {k: np.asarray(v, np.float32) for k, v in hyperparams.items()}
    if layout is not None:
      keys, hyperparams = hosts.place((keys, hyperparams), layout.members())
    per_call = lambda tree: ([tree] if vmapped else [jax.tree.map(lambda x, s=s: x[s], tree)
                                                      for s in range(num_seeds)])
    self._keys, self._hyperparams = per_call(keys), per_call(hyperparams)
    self._init = self._jit(program.init, 0)
    self._epoch_state = self._jit(program.epoch_state, (0, None))
    self._predict = self._jit(program.predict, (0, None))
    self._stack = jax.jit(lambda members: jax.tree.map(lambda *x: jnp.stack(x), *members))
    self._unstack = jax.jit(lambda carry: [jax.tree.map(lambda x, s=s: x[s], carry)
                                           for s in range(num_seeds)])
    self._compiled: dict[int, Any] = {}
    self.compile_seconds = 0.0

  def _jit(self, fn, in_axes, **options):
    """fn compiled over the members: as it is (one member per call), vmapped, or vmapped and
    sharded over a layout's devices (every output has a leading member axis)."""
    if not self._vmapped:
      return jax.jit(fn, **options)
    if self._layout is None:
      return jax.jit(jax.vmap(fn, in_axes=in_axes), **options)
    return jax.jit(jax.vmap(fn, in_axes=in_axes, spmd_axis_name='seeds'),
                   out_shardings=self._layout.members(), **options)

  def init(self) -> Carries:
    return [self._init(keys.init, hyper) for keys, hyper in zip(self._keys, self._hyperparams)]

  def stacked(self, members: Carries) -> Carry:
    """The (M, ...) carry: what checkpoints hold, whichever layout wrote them."""
    return members[0] if self._vmapped else self._stack(members)

  def members(self, stacked: Carry) -> Carries:
    return [stacked] if self._vmapped else self._unstack(stacked)

  def predict(self, members: Carries, x: np.ndarray, batch_size: int,
              active: np.ndarray | None = None) -> np.ndarray:
    """Host copy of the per-member logits for every row of x: (M, N, ...); on CPU the rows
    of members not `active` are zeros (they are not computed)."""
    batches, n = predict_batches(x, batch_size)
    run = self._active(active)
    logits = hosts.to_host([self._predict(self._program.weights(members[i]), batches)
                             for i in run])
    if self._vmapped:
      logits = logits[0]
    else:
      full = np.zeros((len(members),) + np.shape(logits[0]), np.asarray(logits[0]).dtype)
      full[list(run)] = np.stack(logits)
      logits = full
    return logits.reshape((logits.shape[0], -1) + logits.shape[3:])[:, :n]

  def _active(self, active: np.ndarray | None) -> list[int]:
    """The program calls to make: every member's when vmapped (one call does them all),
    else those `active` (a member stopped at a rung costs nothing more)."""
    calls = len(self._keys)
    if self._vmapped or active is None:
      return list(range(calls))
    return [i for i in range(calls) if active[i]]

  def _compile(self, member: Carry, length: int):
    key = length if self._scan else 0
    if key not in self._compiled:
      start = time.perf_counter()
      keys = self._keys[0]
      if self._scan:
        chunk = functools.partial(self._program.chunk, length=length)
        fn = self._jit(chunk, (0, 0, None), donate_argnums=0)
        compiled = fn.lower(member, keys, jnp.int32(0)).compile()
      else:
        epoch_state = self._epoch_state(keys.data, jnp.int32(0))
        fn = self._jit(self._program.step, (0, 0, None, 0), donate_argnums=0)
        compiled = fn.lower(member, keys, jnp.int32(0), epoch_state).compile()
      self.compile_seconds += time.perf_counter() - start
      self._compiled[key] = compiled
    return self._compiled[key]

  def __call__(self, members: Carries, start: int, length: int,
               active: np.ndarray | None = None):
    """Returns the new carries and host copies of the (length, members) losses and grad
    norms; on CPU, members not `active` are left as they are, their losses NaN."""
    run = self._active(active)
    compiled = self._compile(members[run[0]], length)
    members = list(members)
    if self._scan:
      first = jnp.int32(start)
      results = {i: compiled(members[i], self._keys[i], first) for i in run}
      for i in run:
        members[i] = results[i][0]
      metrics = hosts.to_host([results[i][1] for i in run])
      return members, tuple(self._full(len(members), run, [np.reshape(m[k], (length, -1))
                                                           for m in metrics])
                            for k in range(2))
    states = {i: self._epoch_state(self._keys[i].data, jnp.int32(start)) for i in run}
    losses, norms = [], []
    for step in range(start, start + length):
      index = np.int32(step)  # host scalar: a device array per step cost ~90 us
      if step % self._program.steps_per_epoch == 0:
        states = {i: self._epoch_state(self._keys[i].data, index) for i in run}
      for i in run:
        members[i], (loss, norm) = compiled(members[i], self._keys[i], index, states[i])
        losses.append(loss)
        norms.append(norm)
    losses, norms = hosts.to_host((losses, norms))
    shape = (length, -1)
    return members, (self._full(len(members), run, [np.reshape(losses, shape)]),
                     self._full(len(members), run, [np.reshape(norms, shape)]))

  def _full(self, calls: int, run: list[int], parts: list[np.ndarray]) -> np.ndarray:
    """(length, all members) from the columns of the calls made, NaN for the rest."""
    got = np.concatenate(parts, axis=1)
    if len(run) == calls:
      return got
    per_call = got.shape[1] // len(run)
    full = np.full((got.shape[0], calls * per_call), np.nan, got.dtype)
    for j, i in enumerate(run):
      full[:, i * per_call:(i + 1) * per_call] = got[:, j * per_call:(j + 1) * per_call]
    return full

  def cost_info(self, members: Carries) -> dict[str, Any]:
    """FLOPs of one step (XLA's cost analysis, all members) and the compiled memory footprint
    (one member's program on CPU). Asked for after training: it re-traces the step, which
    would otherwise count as training time."""
    keys = self._keys[0]
    step = self._jit(self._program.step, (0, 0, None, 0))
    lowered = step.lower(members[0], keys, jnp.int32(0), self._epoch_state(keys.data, jnp.int32(0)))
    cost = lowered.cost_analysis() or {}
    info: dict[str, Any] = {
        'flops_per_step': float(cost.get('flops', math.nan)) * len(self._keys)}
    memory = next(iter(self._compiled.values())).memory_analysis() if self._compiled else None
    if memory is not None:
      info['compiled_bytes'] = {
          'argument': memory.argument_size_in_bytes, 'output': memory.output_size_in_bytes,
          'temp': memory.temp_size_in_bytes, 'alias': memory.alias_size_in_bytes,
          'peak': getattr(memory, 'peak_memory_in_bytes', None)}
    return info
