"""TensorBoard event files written without TensorFlow (tensorboardX).

Scalars per step, plus an hparams summary in the same run folder, so many runs line up
on TensorBoard's HParams dashboard with their config beside their final metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from tensorboardX import SummaryWriter
from tensorboardX.summary import hparams


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}: HParams wants one flat level of scalar values."""
  flat: dict[str, Any] = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, Mapping):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


class MetricsWriter:
  """One TensorBoard run in `logdir`; `purge_step` hides events a resumed run replaces."""

  def __init__(self, logdir: Path, purge_step: int | None = None):
    self._writer = SummaryWriter(str(logdir), purge_step=purge_step, flush_secs=10)

  def scalars(self, step: int, values: Mapping[str, float]) -> None:
    for tag, value in values.items():
      self._writer.add_scalar(tag, float(value), global_step=step)

  def hparams(self, config: Mapping[str, Any], metrics: Mapping[str, float]) -> None:
    """Writes the session summary the HParams dashboard reads, and its metric scalars."""
    values = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
              for k, v in flatten(config).items()}
    file_writer = self._writer._get_file_writer()  # tensorboardX's documented escape hatch
    for summary in hparams(values, dict(metrics)):
      file_writer.add_summary(summary)
    for tag, value in metrics.items():
      self._writer.add_scalar(tag, float(value))

  def close(self) -> None:
    self._writer.close()
