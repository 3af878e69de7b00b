"""What crosses into a trial: the training split and the inputs to predict, never a label.

A trial runs candidate code, so it gets only what training needs: the training split, the
inputs of the validation split (and, in the final evaluation, of the test split) and the
probe inputs that check the task's invariants. The targets of everything it predicts stay
with the trusted side (`Targets`), which scores the trial's predictions in another process
(`harness.scoring`). The trusted side builds both from the `Task` (`build`) and writes the
inputs to a folder the trial sees read-only (`write`); the trial reads them back (`read`)
without ever importing the dataset generators, which its sandbox hides.

For the language model the validation inputs are the validation text itself (the targets
are the inputs shifted by one): a model that reads ahead is caught by the causality probe.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from harness.splits import Split

if TYPE_CHECKING:
  from harness.datasets import Task

META = 'task.json'
PREDICT_BATCH = 512  # the validation and test inputs are predicted in batches this big
PROBE_BATCH = 7  # probes are predicted in small, differently composed batches
PROBE_EXAMPLES = 64
CAUSAL_EXAMPLES = 16
PROBE_SEED = 20201  # fixed: probes are the same for every trial of a run


@dataclasses.dataclass(frozen=True)
class PredictSet:
  """Inputs the trial predicts, and the batch size it must predict them in."""
  x: np.ndarray
  batch_size: int


@dataclasses.dataclass(frozen=True)
class Inputs:
  """Everything a trial is given: what the task is, the training split, inputs to predict."""
  name: str
  kind: str  # 'classification' | 'language_model'
  input_shape: tuple[int, ...]
  num_outputs: int
  metric_name: str
  metric_direction: str
  train: Split
  predict: dict[str, PredictSet]  # 'val', 'probe_batch', 'probe_causal', 'test'
  dataset: dict[str, Any]  # the run's dataset config, which a trial's config must match


@dataclasses.dataclass(frozen=True)
class Probe:
  """A prediction set whose rows copy validation rows: row j of the probe must predict what
  row `val_index[j]` of the validation set predicts, at positions below `keep[j]` (LM)."""
  val_index: np.ndarray
  keep: np.ndarray | None = None


@dataclasses.dataclass(frozen=True)
class Targets:
  """What only the trusted side holds: the labels of the predicted sets, and the probes."""
  name: str
  kind: str
  input_shape: tuple[int, ...]  # one example, without the batch axis
  input_kind: str  # as the dataset declares it ('signal', 'image', 'text')
  num_outputs: int
  metric_name: str
  metric_direction: str
  labels: dict[str, np.ndarray]  # 'val' (and 'test'): (N,) classes or (N, T) next bytes
  probes: dict[str, Probe]
  fingerprints: dict[str, str]


def _windows(stream: np.ndarray, seq_len: int) -> tuple[np.ndarray, np.ndarray]:
  """A byte stream cut into non-overlapping (input, next-byte target) windows."""
  n = (stream.shape[0] - 1) // seq_len
  idx = np.arange(n)[:, None] * seq_len + np.arange(seq_len + 1)
  windows = stream[idx]
  return windows[:, :-1], windows[:, 1:]


def _split_xy(task: Task, split: Split) -> tuple[np.ndarray, np.ndarray]:
  if task.kind == 'language_model':
    return _windows(split.x, task.input_shape[0])
  return split.x, split.y


def _probes(task: Task, val_x: np.ndarray) -> tuple[dict[str, PredictSet], dict[str, Probe]]:
  """A batch-independence probe (validation rows again, in other batches and order), and for
  the language model a causality probe (rows whose bytes after a cut are replaced)."""
  rng = np.random.default_rng(PROBE_SEED)
  n = val_x.shape[0]
  index = rng.choice(n, size=min(PROBE_EXAMPLES, n), replace=False)
  sets = {'probe_batch': PredictSet(val_x[index], PROBE_BATCH)}
  probes = {'probe_batch': Probe(index)}
  if task.kind == 'language_model':
    seq_len = val_x.shape[1]
    index = rng.choice(n, size=min(CAUSAL_EXAMPLES, n), replace=False)
    cut = rng.integers(1, seq_len - 1, size=index.size)  # positions <= cut keep their bytes
    x = val_x[index].copy()
    for row, position in enumerate(cut):
      x[row, position + 1:] = rng.integers(0, task.num_outputs, size=seq_len - position - 1)
    sets['probe_causal'] = PredictSet(x, PROBE_BATCH)
    probes['probe_causal'] = Probe(index, cut + 1)
  return sets, probes


def build(task: Task, dataset: dict[str, Any], *,
          with_test: bool = False) -> tuple[Inputs, Targets]:
  """Splits the task into what a trial may see and what only the scorer may hold."""
  val_x, val_y = _split_xy(task, task.val)
  predict = {'val': PredictSet(val_x, PREDICT_BATCH)}
  labels = {'val': val_y}
  if with_test:
    test_x, labels['test'] = _split_xy(task, task.test)
    predict['test'] = PredictSet(test_x, PREDICT_BATCH)
  probe_sets, probes = _probes(task, val_x)
  predict.update(probe_sets)
  inputs = Inputs(task.name, task.kind, tuple(task.input_shape), task.num_outputs,
                  task.metric_name, task.metric_direction, task.train, predict, dict(dataset))
  targets = Targets(task.name, task.kind, tuple(task.input_shape), task.input_kind,
                    task.num_outputs, task.metric_name, task.metric_direction, labels, probes,
                    task.fingerprints())
  return inputs, targets


def write(folder: Path, inputs: Inputs) -> None:
  """Writes the inputs as plain .npy files and one JSON file (nothing a loader executes)."""
  folder.mkdir(parents=True, exist_ok=True)
  np.save(folder / 'train_x.npy', inputs.train.x)
  if inputs.train.y is not None:
    np.save(folder / 'train_y.npy', inputs.train.y)
  for name, predict_set in inputs.predict.items():
    np.save(folder / f'predict_{name}.npy', predict_set.x)
  meta = {'name': inputs.name, 'kind': inputs.kind, 'input_shape': list(inputs.input_shape),
          'num_outputs': inputs.num_outputs, 'metric_name': inputs.metric_name,
          'metric_direction': inputs.metric_direction, 'dataset': inputs.dataset,
          'predict': {name: s.batch_size for name, s in inputs.predict.items()}}
  (folder / META).write_text(json.dumps(meta, indent=2, sort_keys=True) + '\n')


def read(folder: Path) -> Inputs:
  """The trial's side of `write`."""
  folder = Path(folder)
  meta = json.loads((folder / META).read_text())
  load = lambda name: np.load(folder / name, allow_pickle=False)
  train_y = load('train_y.npy') if (folder / 'train_y.npy').exists() else None
  predict = {name: PredictSet(load(f'predict_{name}.npy'), int(batch))
             for name, batch in meta['predict'].items()}
  return Inputs(meta['name'], meta['kind'], tuple(meta['input_shape']), int(meta['num_outputs']),
                meta['metric_name'], meta['metric_direction'],
                Split(load('train_x.npy'), train_y), predict, meta['dataset'])
