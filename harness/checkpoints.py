"""Orbax checkpoints of the training state and the host-side run history."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves (arrays, history) pairs asynchronously under an absolute directory."""

  def __init__(self, directory: Path, max_to_keep: int = 2):
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                           enable_async_checkpointing=True)
    self._manager = ocp.CheckpointManager(Path(directory).absolute(), options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state: Any, history: dict[str, Any]) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), history=ocp.args.JsonSave(history)))

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict[str, Any]]:
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    restored = self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), history=ocp.args.JsonRestore()))
    return restored.state, restored.history

  def close(self) -> None:
    """Waits for pending async saves: a process must not exit mid-write."""
    self._manager.wait_until_finished()
    self._manager.close()
