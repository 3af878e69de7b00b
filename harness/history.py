"""What a run has seen so far: learning curves, stability counters, timings.

Kept on the host as plain numbers so it can be checkpointed as JSON beside the arrays;
a resumed run continues these counters exactly where the interrupted one stopped.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

SPIKE_FACTOR = 2.0  # a step whose loss exceeds this multiple of the running average...
SPIKE_MIN_JUMP = 0.1  # ...and the average by this many nats: near-zero losses wobble
SPIKE_WARMUP = 20  # steps before spikes are counted: early losses fall too fast to judge
EMA_DECAY = 0.9


@dataclasses.dataclass
class History:
  """Per-seed running statistics and the evaluation curve."""
  num_seeds: int
  step: int = 0
  train_seconds: float = 0.0
  compile_seconds: float = 0.0
  chunk_step_ms: list[float] = dataclasses.field(default_factory=list)
  loss_ema: list[float] = dataclasses.field(default_factory=list)
  loss_spikes: list[int] = dataclasses.field(default_factory=list)
  max_grad_norm: list[float] = dataclasses.field(default_factory=list)
  last_train_loss: list[float] = dataclasses.field(default_factory=list)
  nonfinite_step: int | None = None
  curve: list[dict] = dataclasses.field(default_factory=list)
  stopped_at: int | None = None  # a batch member stopped at a rung (harness.rungs)

  def __post_init__(self) -> None:
    k = self.num_seeds
    self.loss_ema = self.loss_ema or [math.nan] * k
    self.loss_spikes = self.loss_spikes or [0] * k
    self.max_grad_norm = self.max_grad_norm or [0.0] * k
    self.last_train_loss = self.last_train_loss or [math.nan] * k

  def record_chunk(self, losses: np.ndarray, grad_norms: np.ndarray, seconds: float) -> None:
    """Folds in one chunk's per-step (steps, seeds) losses and gradient norms."""
    losses = np.asarray(losses, np.float64)
    grad_norms = np.asarray(grad_norms, np.float64)
    finite = np.isfinite(losses).all(axis=1) & np.isfinite(grad_norms).all(axis=1)
    if not finite.all() and self.nonfinite_step is None:
      self.nonfinite_step = self.step + int(np.argmin(finite)) + 1
    for t in range(losses.shape[0]):
      for s in range(self.num_seeds):
        self._track_spike(s, losses[t, s], self.step + t + 1)
    self.max_grad_norm = np.fmax(self.max_grad_norm, np.nanmax(grad_norms, axis=0)).tolist()
    self.last_train_loss = losses.mean(axis=0).tolist()
    self.chunk_step_ms.append(1000.0 * seconds / losses.shape[0])
    self.train_seconds += seconds
    self.step += losses.shape[0]

  def _track_spike(self, seed: int, loss: float, step: int) -> None:
    if not math.isfinite(loss):
      return
    ema = self.loss_ema[seed]
    if (step > SPIKE_WARMUP and math.isfinite(ema) and loss > SPIKE_FACTOR * ema
        and loss - ema > SPIKE_MIN_JUMP):
      self.loss_spikes[seed] += 1
    self.loss_ema[seed] = loss if not math.isfinite(ema) else EMA_DECAY * ema + (
        1 - EMA_DECAY) * loss

  @property
  def diverged(self) -> bool:
    return self.nonfinite_step is not None

  def record_eval(self) -> dict:
    """A progress point at an evaluation; its validation numbers come from the scorer."""
    point = {'step': self.step, 'train_loss': list(self.last_train_loss)}
    self.curve.append(point)
    return point

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, data: dict) -> 'History':
    return cls(**data)
