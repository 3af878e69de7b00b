"""The training extras of harness.regimen: label smoothing, a weight EMA, augmentation.

Off by default and then absent from the program (results bit-identical to a config
without the keys); each on changes the result; augmentation reaches training batches only;
batched members and vmapped seeds keep working with all of them on.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from harness import train
from harness.optimizers import make_optimizer
from harness.regimen import Regimen
from harness.splits import Split
from harness.steps import SeedKeys, build_program
from harness.train import ConfigError, train_and_evaluate
from models.mlp import MLP
from tests.conftest import load_experiment, tiny
from tests.test_train import _val_logits

pytestmark = pytest.mark.usefixtures('compile_cache')

EXTRAS = {'label_smoothing': 0.1, 'ema_decay': 0.9, 'augment_shift': 3, 'augment_noise': 0.2}


def _config(**train_values):
  """The tiny MNIST-1D MLP with these train values (of any type: a key is replaced, so a
  test can write what a hand-edited config might hold)."""
  config = tiny(load_experiment('mnist1d_mlp'), steps=20, every=20, checkpoint_every=20)
  with config.unlocked():
    for key, value in train_values.items():
      if key in config.train:
        del config.train[key]
      config.train[key] = value
  return config


@pytest.fixture(scope='module')
def plain(tmp_path_factory):
  """A run without the keys and one with each at its default (as the experiment lists
  them): the same numbers."""
  folder = tmp_path_factory.mktemp('plain')
  absent = _config()
  with absent.unlocked():
    for key in EXTRAS:
      del absent.train[key]
  card = train_and_evaluate(absent, folder / 'absent', num_seeds=1)
  assert all(_config().train[key] == 0 for key in EXTRAS)
  defaults = train_and_evaluate(_config(), folder / 'defaults', num_seeds=1)
  absent, at_default = _val_logits(folder / 'absent'), _val_logits(folder / 'defaults')
  assert all(np.array_equal(a, b) for a, b in zip(absent, at_default, strict=True))
  assert defaults['train_loss'] == card['train_loss']
  return card, absent


@pytest.mark.parametrize('key', sorted(EXTRAS))
def test_each_extra_trains_and_changes_the_result(tmp_path, plain, key):
  card, logits = plain
  on = train_and_evaluate(_config(**{key: EXTRAS[key]}), tmp_path, num_seeds=1)
  assert on['status'] == 'ok'
  assert not np.array_equal(_val_logits(tmp_path)[-1], logits[-1])
  if key == 'ema_decay':  # the average is evaluated; training itself is untouched
    assert on['train_loss'] == card['train_loss']
  else:
    assert on['train_loss'] != card['train_loss']


def test_members_and_vmapped_seeds_keep_working_with_every_extra(tmp_path, monkeypatch):
  """Each member keeps its own EMA and each seed its own augmentation: on CPU a member's
  predictions equal its run alone bit for bit; vmapped (as on accelerators), within float
  tolerance."""
  config = _config(**EXTRAS)
  members = [{'optimizer.learning_rate': 3e-3}, {'optimizer.learning_rate': 1e-2}]
  train_and_evaluate(config, tmp_path / 'batch', num_seeds=1, members=members)
  config.optimizer.learning_rate = 1e-2
  train_and_evaluate(config, tmp_path / 'alone', num_seeds=1)
  alone = _val_logits(tmp_path / 'alone')
  member = _val_logits(tmp_path / 'batch' / 'member-1')
  assert all(np.array_equal(a, b) for a, b in zip(alone, member, strict=True))
  assert not np.array_equal(_val_logits(tmp_path / 'batch' / 'member-0')[-1], member[-1])
  monkeypatch.setattr(train, 'vmap_seeds', lambda: True)
  config.train.scan_steps = False  # the per-step dispatch, vmapped
  train_and_evaluate(config, tmp_path / 'vmapped', num_seeds=1)
  np.testing.assert_allclose(_val_logits(tmp_path / 'vmapped')[-1], alone[-1], rtol=1e-3,
                             atol=1e-4)


def _program(regimen: Regimen):
  rng = np.random.default_rng(0)
  split = Split(rng.normal(size=(64, 40, 1)).astype(np.float32),
                rng.integers(0, 10, 64).astype(np.int32))
  config = _config().optimizer
  model = MLP(width=8, depth=1, input_shape=(40, 1), num_outputs=10, rngs=nnx.Rngs(0))
  graphdef, _ = nnx.split(model)
  make_params = lambda key: nnx.state(MLP(width=8, depth=1, input_shape=(40, 1),
                                          num_outputs=10, rngs=nnx.Rngs(key)), nnx.Param)
  return split, build_program('classification', (40, 1), split, graphdef, make_params,
                              make_optimizer(config, 20), 16, regimen=regimen)


def test_augmentation_reaches_training_batches_only():
  """The same weights predict the same logits with or without augmentation (predict never
  augments); one step from them trains on other inputs, so the weights part."""
  keys = jax.tree.map(lambda k: k[0], SeedKeys.for_seeds([0]))
  hyper = {'learning_rate': 1e-2, 'weight_decay': 0.0, 'grad_clip_norm': 0.0}
  split, plain = _program(Regimen())
  _, augmented = _program(Regimen(augment_shift=4, augment_noise=0.5))
  carry = jax.jit(plain.init)(keys.init, hyper)
  x = jnp.asarray(split.x[None, :16])
  predict = jax.jit(plain.predict)
  np.testing.assert_array_equal(predict(plain.weights(carry), x),
                                jax.jit(augmented.predict)(augmented.weights(carry), x))
  epoch = plain.epoch_state(keys.data, jnp.int32(0))
  (after_plain, _), _ = jax.jit(plain.step)(carry, keys, jnp.int32(0), epoch)
  (after_augmented, _), _ = jax.jit(augmented.step)(carry, keys, jnp.int32(0), epoch)
  assert not np.array_equal(predict(after_plain, x), predict(after_augmented, x))


def test_shift_translates_each_example_with_zeros_and_noise_is_per_example():
  x = jnp.tile(jnp.arange(1.0, 9.0)[None, :, None], (64, 1, 1))
  shifted = Regimen(augment_shift=2).augment(x, jax.random.key(0), jnp.int32(3))
  for row in np.asarray(shifted[..., 0]):
    s = int(np.argmax(row > 0)) or -int(8 - np.count_nonzero(row))
    assert abs(s) <= 2 and np.array_equal(np.roll(np.arange(1.0, 9.0), s)[row > 0], row[row > 0])
    assert np.count_nonzero(row) == 8 - abs(s)
  assert len({tuple(r) for r in np.asarray(shifted[..., 0])}) == 5  # every offset drawn
  image = jnp.ones((4, 8, 8, 1))
  moved = Regimen(augment_shift=1).augment(image, jax.random.key(1), jnp.int32(0))
  assert moved.shape == image.shape and float(moved.min()) in (0.0, 1.0)
  noisy = Regimen(augment_noise=0.1).augment(x, jax.random.key(0), jnp.int32(0))
  assert 0.05 < float(jnp.std(noisy - x)) < 0.15
  again = Regimen(augment_noise=0.1).augment(x, jax.random.key(0), jnp.int32(1))
  assert not np.array_equal(noisy, again)  # another step, other noise


def test_ema_ramps_up_then_follows_the_decay():
  average = Regimen(ema_decay=0.99).average
  assert float(average(jnp.zeros(()), jnp.ones(()), jnp.int32(0))) == pytest.approx(0.9)
  assert float(average(jnp.zeros(()), jnp.ones(()), jnp.int32(10**6))) == pytest.approx(0.01)


@pytest.mark.parametrize('key, value, match', [
    ('label_smoothing', 1.0, r'train.label_smoothing must be in \[0, 1\)'),
    ('ema_decay', -0.1, r'train.ema_decay must be in \[0, 1\)'),
    ('augment_noise', -1.0, 'train.augment_noise must be >= 0'),
    ('augment_shift', 40, r'train.augment_shift must be an integer in \[0, 40\)'),
    ('augment_shift', 1.5, 'train.augment_shift must be an integer'),
    ('ema_decay', 'high', 'train.ema_decay must be a finite number'),
])
def test_bad_values_are_one_line_config_errors(tmp_path, key, value, match):
  with pytest.raises(ConfigError, match=match) as error:
    train_and_evaluate(_config(**{key: value}), tmp_path, num_seeds=1)
  assert '\n' not in str(error.value)


def test_augmentation_of_a_language_model_is_refused():
  with pytest.raises(ValueError, match='not to a language_model task'):
    Regimen.from_config({'augment_noise': 0.1}, 'language_model', (64,))
  assert Regimen.from_config({'label_smoothing': 0.1, 'ema_decay': 0.99}, 'language_model',
                             (64,)) == Regimen(label_smoothing=0.1, ema_decay=0.99)
