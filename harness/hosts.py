"""A run over several hosts (a multi-host TPU VM, or several processes of one machine): one
process per host, joined by `jax.distributed`, one program over all their devices.

Only process 0 writes what a run leaves (predictions, report, scorecard, events); every
process takes part in the collective steps (training, Orbax's checkpoint saves under the
shared workdir), and arrays that span hosts are gathered to every host before they are
written (`to_host`).

The environment asks for it: JAX_COORDINATOR_ADDRESS with JAX_NUM_PROCESSES and
JAX_PROCESS_ID (any cluster, or processes of one machine), or a Cloud TPU VM slice of more
than one host (TPU_WORKER_HOSTNAMES lists them; JAX finds the rest itself).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np

ADDRESS, COUNT, INDEX = 'JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'
TPU_HOSTS = 'TPU_WORKER_HOSTNAMES'


def requested(env: Mapping[str, str]) -> dict[str, Any] | None:
  """jax.distributed.initialize's arguments the environment asks for; None for one process,
  a ValueError (one line) for a request that cannot be right."""
  if COUNT in env or INDEX in env:
    missing = [k for k in (ADDRESS, COUNT, INDEX) if not env.get(k)]
    if missing:
      raise ValueError(f'a multi-process run needs {ADDRESS}, {COUNT} and {INDEX}; '
                       f'missing: {", ".join(missing)}')
    try:
      count, index = int(env[COUNT]), int(env[INDEX])
    except ValueError:
      raise ValueError(f'{COUNT} and {INDEX} must be integers, got {env[COUNT]!r} and '
                       f'{env[INDEX]!r}') from None
    if count < 1 or not 0 <= index < count:
      raise ValueError(f'{INDEX}={index} is not a process of {COUNT}={count}')
    return {'coordinator_address': env[ADDRESS], 'num_processes': count, 'process_id': index}
  if len([h for h in env.get(TPU_HOSTS, '').split(',') if h.strip()]) > 1:
    return {}  # a TPU slice's hosts: JAX reads the cluster from the TPU metadata
  return None


def initialize(env: Mapping[str, str] = os.environ) -> None:
  """Joins the other processes when the environment asks for it (before any other JAX call)."""
  arguments = requested(env)
  if arguments is not None:
    jax.distributed.initialize(**arguments)


def index() -> int:
  return jax.process_index()


def primary() -> bool:
  """Whether this process writes the run's outputs."""
  return jax.process_index() == 0


def to_host(tree: Any) -> Any:
  """Host (numpy) copies of the arrays in `tree`; an array sharded over several hosts is
  gathered whole on every host."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  def gather(x: Any) -> Any:
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return jax.device_get(x)
  return jax.tree.map(gather, tree)


def barrier(name: str) -> None:
  """Every process waits here for the others (nothing to wait for with one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def place(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """`tree` laid out by `sharding`; over several hosts each builds its own shards from its
  copy of the values (every host holds them all: the same seeds, the same settings)."""
  if jax.process_count() == 1:
    return jax.device_put(tree, sharding)

  def one(x: Any) -> jax.Array:
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
  return jax.tree.map(one, tree)
