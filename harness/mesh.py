"""A trial over several devices: `train.mesh` as a `jax.sharding.Mesh` and where arrays go.

`train.mesh` names the size of two axes, e.g. 'seeds=4', 'data=2' or 'seeds=2,data=4'
(absent or '': one device, the default). 'seeds' splits the members (seeds, and candidates
of a batch) across devices: the vmapped program's leading axis is sharded over it (vmap's
`spmd_axis_name`), so each device trains its share of the members. 'data' splits each
member's batch: the batch a step samples is constrained to be sharded over it, and XLA's
SPMD partitioner inserts the gradient all-reduce. Both are the same program as on one device,
laid out by XLA, so results agree with the one-device run within float tolerance.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ('seeds', 'data')


def parse(spec: str) -> dict[str, int]:
  """'seeds=2,data=4' -> {'seeds': 2, 'data': 4}; a missing axis has size 1."""
  sizes = dict.fromkeys(AXES, 1)
  for part in filter(None, (p.strip() for p in str(spec).split(','))):
    name, _, size = part.partition('=')
    if name.strip() not in AXES or not size.strip().isdigit() or int(size) < 1:
      raise ValueError(f'train.mesh {spec!r}: expected axis=size with axes {AXES}, '
                       f'e.g. "seeds=4" or "seeds=2,data=2"')
    sizes[name.strip()] = int(size)
  return sizes


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the members' arrays live on a mesh of devices."""
  mesh: Mesh

  @property
  def seeds(self) -> int:
    return self.mesh.shape['seeds']

  @property
  def data(self) -> int:
    return self.mesh.shape['data']

  def members(self) -> NamedSharding:
    """The sharding of an array with one row per member."""
    return NamedSharding(self.mesh, PartitionSpec('seeds'))

  def constrain_batch(self, x: jax.Array) -> jax.Array:
    """One member's batch (inside the vmap over members), split over 'data'."""
    if self.data == 1:
      return x
    return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, PartitionSpec('data')))


def layout(spec: str, members: int, batch_size: int) -> Layout | None:
  """The layout `train.mesh` asks for, checked against the devices, the number of members
  and the batch size; None for one device."""
  sizes = parse(spec)
  if math.prod(sizes.values()) == 1:
    return None
  needed, available = math.prod(sizes.values()), jax.device_count()
  if needed > available:
    raise ValueError(f'train.mesh {spec!r} needs {needed} devices, {available} are visible')
  if members % sizes['seeds']:
    raise ValueError(f'train.mesh {spec!r}: {members} members (seeds x candidates) do not '
                     f'split over {sizes["seeds"]} devices')
  if batch_size % sizes['data']:
    raise ValueError(f'train.mesh {spec!r}: train.batch_size {batch_size} does not split '
                     f'over {sizes["data"]} devices')
  devices = np.asarray(jax.devices()[:needed]).reshape(sizes['seeds'], sizes['data'])
  return Layout(Mesh(devices, AXES))
