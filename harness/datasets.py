"""The offline tasks, each cut into deterministic train/validation/test splits.

Everything here is generated or shipped with an installed package: nothing is downloaded.
Each split carries a fingerprint (sha256 of its arrays) so a run records exactly which
data it saw, and the agent can refuse a trial whose data changed.

Generating MNIST-1D takes seconds, so a generated task is kept in `runs/_data-cache`, keyed
by the dataset config and the versions of what generates it, with the fingerprints it had
when generated; an entry whose arrays no longer match them is an error, never used. Only
the trusted side loads tasks (a trial gets its data as a folder of inputs and never sees
this cache).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import sysconfig
import tempfile
from pathlib import Path

import ml_collections
import numpy as np

from harness.splits import Split

# The Python documentation's topic texts, shipped with every CPython (`pydoc_data`): English
# prose with code, no download. Nothing but `help()` imports it, so a trial's sandbox can
# hide it: the held-out text is unreachable from candidate code. Its text differs across
# Python versions; the fingerprint in the scorecard records which text a run trained on.
CHARLM_SOURCE = Path('pydoc_data') / 'topics.py'
DATA_CACHE = Path(__file__).resolve().parent.parent / 'runs' / '_data-cache'
_CACHE_FORMAT = 1
_GENERATORS = {'digits': 'scikit-learn', 'mnist1d': 'mnist1d',
               'mnist1d_shuffled': 'mnist1d'}  # distributions, by task
# The one permutation of MNIST-1D's 40 time steps that `mnist1d_shuffled` applies to every
# example (train, validation and test alike), drawn once from this seed.
SHUFFLE_SEED = 2020
_SPLITS = ('train', 'val', 'test')


@dataclasses.dataclass(frozen=True)
class Task:
  """A dataset with its splits and how it is scored."""
  name: str
  kind: str  # 'classification' | 'language_model'
  train: Split
  val: Split
  test: Split
  input_shape: tuple[int, ...]  # per example
  input_kind: str  # 'signal' | 'image' | 'text': what one example is, so which models fit it
  num_outputs: int
  metric_name: str
  metric_direction: str  # 'max' | 'min'

  def fingerprints(self) -> dict[str, str]:
    return {'train': self.train.fingerprint, 'val': self.val.fingerprint,
            'test': self.test.fingerprint}


def _partition(n: int, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
  """Shuffles range(n) with a fixed seed and cuts it into disjoint index sets."""
  order = np.random.default_rng(seed).permutation(n)
  sizes = [int(round(f * n)) for f in fractions]
  bounds = np.cumsum([0] + sizes)
  return [np.sort(order[a:b]) for a, b in zip(bounds[:-1], bounds[1:])] + [
      np.sort(order[bounds[-1]:])]


def _check_fraction(name: str, value: float) -> None:
  if not 0.0 < value < 0.5:
    raise ValueError(f'dataset.{name} must be in (0, 0.5), got {value}')


def load_digits(config: ml_collections.ConfigDict) -> Task:
  """scikit-learn's 8x8 digits (1797 images), scaled to [0, 1]."""
  from sklearn import datasets as sk_datasets
  _check_fraction('val_fraction', config.val_fraction)
  _check_fraction('test_fraction', config.test_fraction)
  bunch = sk_datasets.load_digits()
  x = (bunch.images / 16.0).astype(np.float32)[..., None]
  y = bunch.target.astype(np.int32)
  test_idx, val_idx, train_idx = _partition(
      len(y), (config.test_fraction, config.val_fraction), config.split_seed)
  split = lambda idx: Split(x[idx], y[idx])
  return Task('digits', 'classification', split(train_idx), split(val_idx),
              split(test_idx), (8, 8, 1), 'image', 10, 'accuracy', 'max')


def load_mnist1d(config: ml_collections.ConfigDict) -> Task:
  """MNIST-1D from its procedural generator with default arguments (no download).

  The generator's own 4000/1000 split is kept: its 1000 examples are the test split,
  and validation is carved out of the 4000 training examples.
  """
  from mnist1d.data import get_dataset_args, make_dataset
  _check_fraction('val_fraction', config.val_fraction)
  data = make_dataset(get_dataset_args())
  x = data['x'].astype(np.float32)[..., None]
  y = data['y'].astype(np.int32)
  val_idx, train_idx = _partition(len(y), (config.val_fraction,), config.split_seed)
  test = Split(data['x_test'].astype(np.float32)[..., None],
               data['y_test'].astype(np.int32))
  return Task('mnist1d', 'classification', Split(x[train_idx], y[train_idx]),
              Split(x[val_idx], y[val_idx]), test, (40, 1), 'signal', 10, 'accuracy', 'max')


def load_mnist1d_shuffled(config: ml_collections.ConfigDict) -> Task:
  """MNIST-1D with its time steps shuffled by one fixed permutation (the same for every
  example): a task of another kind, where the order of the samples carries no information.

  Greydanus (2020) reports test accuracy 56% for a CNN and 68% for an MLP on it: a
  convolution's prior about neighbouring samples no longer holds, while an MLP, which never
  used the order, is unaffected. So a change that wins on MNIST-1D through locality (a
  convolution, a shift augmentation) can lose here for a real reason.
  """
  task = load_mnist1d(config)
  order = np.random.default_rng(SHUFFLE_SEED).permutation(task.input_shape[0])
  shuffled = lambda split: Split(np.ascontiguousarray(split.x[:, order]), split.y)
  return dataclasses.replace(task, name='mnist1d_shuffled', train=shuffled(task.train),
                             val=shuffled(task.val), test=shuffled(task.test))


def charlm_path() -> Path:
  """Where the corpus lives: the sandbox hides this file's folder from trials."""
  return Path(sysconfig.get_paths()['stdlib']) / CHARLM_SOURCE


def charlm_corpus() -> bytes:
  return charlm_path().read_bytes()


def load_charlm(config: ml_collections.ConfigDict) -> Task:
  """Byte-level language modelling; contiguous train/validation/test cuts, like enwik8."""
  _check_fraction('val_fraction', config.val_fraction)
  _check_fraction('test_fraction', config.test_fraction)
  stream = np.frombuffer(charlm_corpus(), dtype=np.uint8).astype(np.int32)
  n = len(stream)
  n_test = int(n * config.test_fraction)
  n_val = int(n * config.val_fraction)
  train, val, test = (stream[:n - n_val - n_test], stream[n - n_val - n_test:n - n_test],
                      stream[n - n_test:])
  return Task('charlm', 'language_model', Split(train, None), Split(val, None),
              Split(test, None), (config.seq_len,), 'text', 256, 'bits_per_byte', 'min')


def source_paths() -> tuple[Path, ...]:
  """Where the data comes from (generator packages, shipped files) and where it is kept (the
  data cache): a trial's sandbox hides these, so candidate code can neither regenerate nor
  read the held-out splits, wherever the harness is installed (a cache inside an installed
  package would otherwise be mounted with the Python installation)."""
  import importlib.util
  found = [charlm_path().parent, DATA_CACHE]
  for package in ('sklearn', 'mnist1d'):
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
      found += [Path(p) for p in spec.submodule_search_locations]
  return tuple(found)


LOADERS = {'digits': load_digits, 'mnist1d': load_mnist1d,
           'mnist1d_shuffled': load_mnist1d_shuffled, 'charlm': load_charlm}


class DataCacheError(ValueError):
  """A data cache entry does not hold the data it recorded: it is never used."""


def load_task(config: ml_collections.ConfigDict, cache: Path | None = DATA_CACHE) -> Task:
  """Loads the task named by config.name: memoised in the process, and kept in `cache`
  (None: generated afresh)."""
  if config.name not in LOADERS:
    raise ValueError(f'unknown dataset.name {config.name!r}; known: {sorted(LOADERS)}')
  return _load_cached(tuple(sorted(config.to_dict().items())), cache)


@functools.lru_cache(maxsize=8)
def _load_cached(items: tuple, cache: Path | None) -> Task:
  config = ml_collections.ConfigDict(dict(items))
  if cache is None:
    return LOADERS[config.name](config)
  path = cache / f'{config.name}-{_cache_key(config)}.npz'
  if path.exists():
    return _read_entry(path)
  task = LOADERS[config.name](config)
  try:
    _write_entry(path, task)
  except OSError:
    pass  # a read-only or full disk: the data is still right, only not kept
  return task


def _cache_key(config: ml_collections.ConfigDict) -> str:
  """The generator's arguments and what could change its output: the versions of Python
  (charlm's text), numpy and the generating package."""
  package = _GENERATORS.get(config.name)
  versions = {'python': platform.python_version(), 'numpy': np.__version__,
              **({package: importlib.metadata.version(package)} if package else {})}
  text = json.dumps({'format': _CACHE_FORMAT, 'config': config.to_dict(),
                     'versions': versions}, sort_keys=True)
  return hashlib.sha256(text.encode()).hexdigest()[:24]


def _write_entry(path: Path, task: Task) -> None:
  """Arrays and the task's description with its fingerprints in one .npz (nothing a loader
  executes), written to a temporary file and renamed: a reader never sees half of one."""
  fields = {f.name: getattr(task, f.name) for f in dataclasses.fields(Task)
            if f.name not in _SPLITS}
  arrays = {'meta': np.array(json.dumps({**fields, 'fingerprints': task.fingerprints()}))}
  for name in _SPLITS:
    split = getattr(task, name)
    arrays[f'{name}_x'] = split.x
    if split.y is not None:
      arrays[f'{name}_y'] = split.y
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f'.{path.name}.')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(buffer.getbuffer())
    os.replace(tmp, path)
  except BaseException:
    Path(tmp).unlink(missing_ok=True)
    raise


def _read_entry(path: Path) -> Task:
  try:
    with np.load(path, allow_pickle=False) as data:
      meta = json.loads(str(data['meta']))
      splits = {name: Split(data[f'{name}_x'],
                            data[f'{name}_y'] if f'{name}_y' in data.files else None)
                for name in _SPLITS}
      recorded = meta.pop('fingerprints')
      task = Task(**{**meta, **splits, 'input_shape': tuple(meta['input_shape'])})
  except Exception as e:  # a truncated or foreign file: zip, JSON, key and type errors
    raise DataCacheError(f'data cache entry {path} cannot be read ({type(e).__name__}: {e}); '
                         f'delete it to generate the data again') from e
  if task.fingerprints() != recorded:
    raise DataCacheError(f'data cache entry {path} does not hold the data it recorded '
                         f'(fingerprints {task.fingerprints()} vs {recorded}); delete it to '
                         f'generate the data again')
  return task
