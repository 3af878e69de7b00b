"""Splits are disjoint, deterministic and fingerprinted; the test split stays apart."""

import dataclasses

import ml_collections
import numpy as np
import pytest

from harness import datasets
from tests.conftest import load_experiment


def rows(array: np.ndarray) -> set[bytes]:
  return {r.tobytes() for r in array.reshape(array.shape[0], -1)}


@pytest.mark.parametrize('name', ['digits_mlp', 'mnist1d_mlp'])
def test_classification_splits_are_disjoint_and_complete(name):
  task = datasets.load_task(load_experiment(name).dataset)
  train, val, test = rows(task.train.x), rows(task.val.x), rows(task.test.x)
  assert not train & val and not train & test and not val & test
  assert task.train.x.shape[0] == task.train.y.shape[0]
  assert task.val.x.shape[1:] == task.input_shape


def test_mnist1d_keeps_the_papers_4000_1000_split():
  task = datasets.load_task(load_experiment('mnist1d_mlp').dataset)
  assert task.train.x.shape[0] + task.val.x.shape[0] == 4000
  assert task.test.x.shape == (1000, 40, 1)
  assert task.val.x.shape[0] == 400


@pytest.mark.parametrize('name', ['digits_mlp', 'mnist1d_mlp', 'charlm_transformer'])
def test_loading_twice_gives_identical_fingerprints(name):
  config = load_experiment(name).dataset
  assert datasets.load_task(config).fingerprints() == datasets.load_task(config).fingerprints()


def test_split_seed_changes_the_split_but_not_the_test_set():
  config = load_experiment('mnist1d_mlp').dataset
  other = ml_collections.ConfigDict(config.to_dict())
  other.split_seed = 1
  a, b = datasets.load_task(config), datasets.load_task(other)
  assert a.train.fingerprint != b.train.fingerprint
  assert a.val.fingerprint != b.val.fingerprint
  assert a.test.fingerprint == b.test.fingerprint


def test_fingerprint_sees_a_single_changed_value():
  split = datasets.Split(np.zeros((4, 3), np.float32), np.arange(4))
  x = split.x.copy()
  x[2, 1] = 1e-6
  changed = datasets.Split(x, split.y.copy())
  assert split.fingerprint != changed.fingerprint


def test_charlm_cuts_the_corpus_into_contiguous_ordered_pieces():
  task = datasets.load_task(load_experiment('charlm_transformer').dataset)
  stream = np.frombuffer(datasets.charlm_corpus(), np.uint8)
  joined = np.concatenate([task.train.x, task.val.x, task.test.x])
  np.testing.assert_array_equal(joined, stream)
  assert task.metric_direction == 'min' and task.num_outputs == 256


def test_unknown_dataset_and_bad_fraction_are_rejected():
  with pytest.raises(ValueError, match='unknown dataset.name'):
    datasets.load_task(ml_collections.ConfigDict({'name': 'imagenet'}))
  config = load_experiment('digits_mlp').dataset
  config.val_fraction = 0.9
  with pytest.raises(ValueError, match='val_fraction'):
    datasets.load_task(config)


def _toy(config: ml_collections.ConfigDict) -> datasets.Task:
  """A task made from config.seed: the generator the cache tests count calls of."""
  rng = np.random.default_rng(config.seed)
  split = lambda n: datasets.Split(rng.normal(size=(n, 3)).astype(np.float32),
                                   rng.integers(0, 2, n).astype(np.int32))
  return datasets.Task('toy', 'classification', split(8), split(4), split(4), (3,), 'signal',
                       2, 'accuracy', 'max')


@pytest.fixture
def toy(monkeypatch):
  calls = []
  monkeypatch.setitem(datasets.LOADERS, 'toy', lambda config: calls.append(1) or _toy(config))
  datasets._load_cached.cache_clear()  # the process's memo would hide the cache
  yield ml_collections.ConfigDict({'name': 'toy', 'seed': 0}), calls
  datasets._load_cached.cache_clear()


def test_a_task_is_generated_once_and_read_back_from_the_cache(tmp_path, toy):
  config, calls = toy
  first = datasets.load_task(config, cache=tmp_path)
  datasets._load_cached.cache_clear()
  again = datasets.load_task(config, cache=tmp_path)
  assert len(calls) == 1 and len(list(tmp_path.iterdir())) == 1
  described = lambda task: {f.name: getattr(task, f.name) for f in dataclasses.fields(task)
                            if f.name not in ('train', 'val', 'test')}
  assert described(again) == described(first) and again.input_shape == (3,)
  assert again.fingerprints() == first.fingerprints()
  np.testing.assert_array_equal(again.val.y, first.val.y)
  other = ml_collections.ConfigDict({'name': 'toy', 'seed': 1})  # other arguments, other entry
  assert datasets.load_task(other, cache=tmp_path).fingerprints() != first.fingerprints()
  assert len(calls) == 2 and len(list(tmp_path.iterdir())) == 2


def test_a_cache_entry_that_does_not_hold_its_recorded_data_is_refused(tmp_path, toy):
  config, _ = toy
  datasets.load_task(config, cache=tmp_path)
  datasets._load_cached.cache_clear()
  [entry] = tmp_path.iterdir()
  with np.load(entry) as data:
    arrays = dict(data)
  arrays['val_y'] = 1 - arrays['val_y']  # relabelled, fingerprints left as recorded
  with entry.open('wb') as f:
    np.savez(f, **arrays)
  with pytest.raises(datasets.DataCacheError, match='does not hold the data it recorded') as e:
    datasets.load_task(config, cache=tmp_path)
  assert '\n' not in str(e.value) and 'delete it' in str(e.value)
  entry.write_bytes(entry.read_bytes()[:100])  # truncated
  with pytest.raises(datasets.DataCacheError, match='cannot be read'):
    datasets.load_task(config, cache=tmp_path)
