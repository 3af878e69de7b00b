"""A split's arrays and its fingerprint: shared by the loaders (trusted side) and the trial,
which gets its training split without ever importing the loaders."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np


@dataclasses.dataclass(frozen=True)
class Split:
  """Inputs and targets of one split; for the char LM, x is the byte stream and y is None."""
  x: np.ndarray
  y: np.ndarray | None

  def __post_init__(self) -> None:
    for array in (self.x, self.y):  # splits are shared by the loader's cache: never mutate
      if array is not None:
        array.setflags(write=False)

  @property
  def fingerprint(self) -> str:
    digest = hashlib.sha256()
    for array in (self.x, self.y):
      if array is not None:
        digest.update(str((array.dtype, array.shape)).encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]

