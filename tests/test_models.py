"""Tests for models/: shapes, options, dropout, remat, dtype, causality, and the
functional (split / vmap over seeds / merge) pattern the training loop relies on.

XLA compilation dominates the run time on CPU, so the models are tiny, every
test uses the same few shapes (JAX caches compiled ops by shape), and shape
checks are abstract (jax.eval_shape compiles nothing).
"""

import functools
import itertools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from experiments import charlm_transformer, digits_mlp, mnist1d_mlp
from models import MODELS, build_model
from models.layers import ACTIVATIONS, NORMALIZATIONS

VOCAB = 256
NUM_CLASSES = 10
BATCH = 2

# Small but complete configs: every constructor argument is given, as in experiments/.
TINY = {
  'mlp': dict(
    width=16, depth=2, activation='relu', normalization='none', dropout=0.0,
    residual=False, dtype='float32', remat=False,
  ),
  'cnn1d': dict(
    channels=4, depth=2, kernel_size=3, activation='relu', normalization='none',
    dropout=0.0, residual=False, dtype='float32', remat=False, pooling='flatten',
  ),
  'cnn2d': dict(
    channels=4, depth=2, kernel_size=3, activation='relu', normalization='none',
    dropout=0.0, residual=False, dtype='float32', remat=False, pooling='flatten',
  ),
  'transformer': dict(
    width=16, depth=2, num_heads=2, mlp_ratio=2, activation='gelu',
    normalization='layernorm', dropout=0.0, dtype='float32', remat=False,
  ),
}

# The per-example input shape each family is tested on by default.
DEFAULT_SHAPE = {
  'mlp': (40, 1),
  'cnn1d': (40, 1),
  'cnn2d': (8, 8, 1),
  'transformer': (8,),
}

FAMILIES = sorted(MODELS)


def make_config(name: str, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict({'name': name, **TINY[name]})
  config.update(overrides)
  return config


def num_outputs_for(name: str) -> int:
  return VOCAB if name == 'transformer' else NUM_CLASSES


def make_input(name: str, input_shape: tuple[int, ...] | None = None) -> jax.Array:
  input_shape = input_shape or DEFAULT_SHAPE[name]
  key = jax.random.key(0)
  if name == 'transformer':
    return jax.random.randint(key, (BATCH, *input_shape), 0, VOCAB, dtype=jnp.int32)
  return jax.random.normal(key, (BATCH, *input_shape))


def make(name: str, input_shape: tuple[int, ...] | None = None, seed: int = 0, **overrides):
  return build_model(
    make_config(name, **overrides),
    input_shape=input_shape or DEFAULT_SHAPE[name],
    num_outputs=num_outputs_for(name),
    rngs=nnx.Rngs(seed),
  )


def copy_params(src: nnx.Module, dst: nnx.Module) -> None:
  """Gives dst src's parameters (dst may have extra ones, e.g. norm scales)."""
  nnx.update(dst, nnx.state(src, nnx.Param))


def assert_differ(a: jax.Array, b: jax.Array) -> None:
  assert not np.allclose(a, b, atol=1e-5), 'outputs should differ'


def expected_shape(name: str, x_shape: tuple[int, ...]) -> tuple[int, ...]:
  if name == 'transformer':
    return (*x_shape, VOCAB)
  return (x_shape[0], NUM_CLASSES)


@functools.partial(jax.jit, static_argnums=0)
def jit_apply(graphdef: nnx.GraphDef, params: nnx.State, x: jax.Array) -> jax.Array:
  return nnx.merge(graphdef, params)(x)


SHAPES = [
  ('mlp', (40, 1), {}),  # mnist1d
  ('mlp', (8, 8, 1), {}),  # digits
  ('mlp', (64,), {'depth': 3}),  # flat features
  ('cnn1d', (40, 1), {}),
  ('cnn1d', (40,), {}),  # channel axis added by the model
  ('cnn1d', (16, 3), {'pooling': 'mean'}),
  ('cnn2d', (8, 8, 1), {}),
  ('cnn2d', (8, 8), {}),  # channel axis added by the model
  ('cnn2d', (6, 10, 3), {'pooling': 'max'}),
  ('transformer', (64,), {}),  # charlm's seq_len
  ('transformer', (16,), {'depth': 3}),
  ('transformer', (1,), {}),
]


@pytest.mark.parametrize('name,input_shape,overrides', SHAPES)
def test_output_shape_and_dtype(name, input_shape, overrides):
  config = make_config(name, **overrides)
  model = nnx.eval_shape(
    lambda: build_model(
      config, input_shape=input_shape, num_outputs=num_outputs_for(name), rngs=nnx.Rngs(0)
    )
  )
  x_shape = (BATCH, *input_shape)
  x = jax.ShapeDtypeStruct(x_shape, jnp.int32 if name == 'transformer' else jnp.float32)
  graphdef, params = nnx.split(model, nnx.Param)
  logits = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
  assert logits.shape == expected_shape(name, x_shape)
  assert logits.dtype == jnp.float32


@pytest.mark.parametrize('name', FAMILIES)
def test_runs_and_is_finite(name):
  x = make_input(name)
  logits = make(name)(x)
  assert logits.shape == expected_shape(name, x.shape)
  assert np.all(np.isfinite(logits))


def test_transformer_accepts_shorter_sequences():
  model = nnx.eval_shape(lambda: make('transformer', (16,)))
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.ShapeDtypeStruct((BATCH, 5), jnp.int32)
  logits = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
  assert logits.shape == (BATCH, 5, VOCAB)


@pytest.mark.parametrize('name', ['cnn1d', 'cnn2d'])
def test_pooling_matters(name):
  x = make_input(name)
  # 'mean' and 'max' have identical parameter shapes: give them the same ones.
  mean_model, max_model = make(name, pooling='mean'), make(name, pooling='max', seed=1)
  copy_params(mean_model, max_model)
  assert_differ(mean_model(x), max_model(x))


@pytest.mark.parametrize('name', FAMILIES)
def test_every_activation_builds_runs_and_matters(name):
  x = make_input(name)
  reference = make(name)
  outputs = {}
  for activation in ACTIVATIONS:
    model = make(name, activation=activation)
    copy_params(reference, model)
    outputs[activation] = model(x)
    assert np.all(np.isfinite(outputs[activation]))
  for a, b in itertools.combinations(ACTIVATIONS, 2):
    assert not np.allclose(outputs[a], outputs[b], atol=1e-5), (a, b)


def count_params(model: nnx.Module) -> int:
  return len(jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.parametrize('name', FAMILIES)
def test_every_normalization_builds_runs_and_matters(name):
  x = make_input(name)
  # Same weights everywhere; the norms keep their own (scale 1, bias 0) params.
  reference = make(name, normalization='none')
  outputs = {}
  for normalization in NORMALIZATIONS:
    model = make(name, normalization=normalization)
    copy_params(reference, model)
    outputs[normalization] = model(x)
    assert np.all(np.isfinite(outputs[normalization]))
  for a, b in itertools.combinations(NORMALIZATIONS, 2):
    assert not np.allclose(outputs[a], outputs[b], atol=1e-5), (a, b)
  # layernorm adds a scale and a bias per norm, rmsnorm only a scale.
  base = count_params(reference)
  layernorm = count_params(make(name, normalization='layernorm'))
  rmsnorm = count_params(make(name, normalization='rmsnorm'))
  assert layernorm - base == 2 * (rmsnorm - base) > 0


@pytest.mark.parametrize(
  'option,value',
  [
    ('activation', 'swish'),
    ('normalization', 'batchnorm'),
    ('dtype', 'float16'),
  ],
)
@pytest.mark.parametrize('name', FAMILIES)
def test_unknown_option_value_raises(name, option, value):
  with pytest.raises(ValueError, match=value):
    make(name, **{option: value})


@pytest.mark.parametrize('name', ['cnn1d', 'cnn2d'])
def test_unknown_pooling_raises(name):
  with pytest.raises(ValueError, match='avg'):
    make(name, pooling='avg')


@pytest.mark.parametrize('name', ['cnn1d', 'cnn2d'])
def test_downsample_pools_between_blocks_and_shrinks_the_flattened_head(name):
  """downsample 1 is the plain network; 2 max-pools after each block, so the flatten head
  sees ceil(size / 4) positions per axis after two blocks, and the function changes."""
  x = make_input(name)
  plain, pooled = make(name), make(name, downsample=2)
  assert make(name, downsample=1).head.in_features == plain.head.in_features
  dims = len(DEFAULT_SHAPE[name]) - 1
  positions = np.prod([-(-n // 4) for n in DEFAULT_SHAPE[name][:dims]])
  assert pooled.head.in_features == positions * TINY[name]['channels']
  assert np.all(np.isfinite(pooled(x)))
  reference, pooled_max = make(name, pooling='max'), make(name, downsample=2, pooling='max')
  copy_params(reference, pooled_max)  # global max pooling: the same head shape
  assert_differ(reference(x), pooled_max(x))
  with pytest.raises(ValueError, match='downsample'):
    make(name, downsample=0)


@pytest.mark.parametrize('name', FAMILIES)
def test_dropout(name):
  x = make_input(name)
  plain = make(name, dropout=0.0)
  model = make(name, dropout=0.5, seed=1)
  copy_params(plain, model)
  key_a, key_b = jax.random.key(1), jax.random.key(2)

  # Identity when not training, with or without rngs.
  np.testing.assert_array_equal(model(x), plain(x))
  np.testing.assert_array_equal(
    model(x, train=False, rngs=nnx.Rngs(dropout=key_a)), plain(x)
  )
  # Random when training, and reproducible from the key.
  train_a = model(x, train=True, rngs=nnx.Rngs(dropout=key_a))
  train_a_again = model(x, train=True, rngs=nnx.Rngs(dropout=key_a))
  train_b = model(x, train=True, rngs=nnx.Rngs(dropout=key_b))
  np.testing.assert_array_equal(train_a, train_a_again)
  assert_differ(train_a, train_b)
  assert_differ(train_a, plain(x))
  # dropout=0 does not need rngs even when training.
  np.testing.assert_array_equal(plain(x, train=True), plain(x))
  # Training with dropout but without randomness is an error, not a silent no-op.
  with pytest.raises(Exception, match='rngs'):
    model(x, train=True)


@pytest.mark.parametrize('name', ['mlp', 'cnn1d', 'cnn2d'])
def test_residual_changes_the_function(name):
  x = make_input(name)
  plain = make(name, depth=2, residual=False)
  residual = make(name, depth=2, residual=True, seed=1)
  copy_params(plain, residual)
  assert_differ(plain(x), residual(x))
  # With one hidden layer there is no pair of equal widths to connect.
  plain = make(name, depth=1, residual=False)
  residual = make(name, depth=1, residual=True, seed=1)
  copy_params(plain, residual)
  np.testing.assert_array_equal(plain(x), residual(x))


@pytest.mark.parametrize('name', FAMILIES)
def test_bfloat16_computes_in_bfloat16_and_returns_float32(name):
  x = make_input(name)
  full = make(name, dtype='float32')
  half = make(name, dtype='bfloat16')
  for leaf in jax.tree.leaves(nnx.state(half, nnx.Param)):
    assert leaf.dtype == jnp.float32
  copy_params(full, half)
  full_logits = full(x)
  half_logits = jit_apply(*nnx.split(half, nnx.Param), x)
  assert half_logits.dtype == jnp.float32
  # Rounding to bfloat16 shows up in the logits, but they stay close.
  assert not np.array_equal(full_logits, half_logits)
  scale = np.abs(full_logits).max()
  np.testing.assert_allclose(half_logits, full_logits, atol=0.1 * scale)


def test_transformer_is_causal():
  model = make('transformer')
  x = make_input('transformer')
  t = 3
  changed = x.at[:, t].set((x[:, t] + 1) % VOCAB)
  before, after = model(x), model(changed)
  np.testing.assert_array_equal(before[:, :t], after[:, :t])
  for position in range(t, x.shape[1]):
    assert_differ(before[:, position], after[:, position])


def test_transformer_uses_positions():
  model = make('transformer')
  # Without positional embeddings, causal attention over identical tokens gives
  # identical outputs at every position.
  logits = model(jnp.full((BATCH, DEFAULT_SHAPE['transformer'][0]), 7, jnp.int32))
  assert_differ(logits[:, 0], logits[:, 1])


def test_transformer_rejects_sequences_longer_than_input_shape():
  model = nnx.eval_shape(lambda: make('transformer', (8,)))
  graphdef, params = nnx.split(model, nnx.Param)
  x = jax.ShapeDtypeStruct((BATCH, 9), jnp.int32)
  with pytest.raises(ValueError, match='9'):
    jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x), params, x)


def test_unknown_model_name_raises():
  with pytest.raises(ValueError) as error:
    build_model({'name': 'resnet'}, input_shape=(4,), num_outputs=2, rngs=nnx.Rngs(0))
  for known in ('mlp', 'cnn1d', 'cnn2d', 'transformer'):
    assert known in str(error.value)


@pytest.mark.parametrize('name', FAMILIES)
def test_unknown_kwarg_raises(name):
  with pytest.raises(TypeError, match='not_a_knob'):
    make(name, not_a_knob=1)


def test_switching_family_without_editing_keys_raises():
  config = mnist1d_mlp.get_config().model
  config.name = 'transformer'
  with pytest.raises(TypeError, match='residual'):
    build_model(config, input_shape=(40,), num_outputs=VOCAB, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
  'experiment,input_shape,num_outputs,x,out_shape',
  [
    (mnist1d_mlp, (40, 1), 10, jax.ShapeDtypeStruct((BATCH, 40, 1), jnp.float32), (BATCH, 10)),
    (digits_mlp, (8, 8, 1), 10, jax.ShapeDtypeStruct((BATCH, 8, 8, 1), jnp.float32), (BATCH, 10)),
    (charlm_transformer, (64,), VOCAB, jax.ShapeDtypeStruct((BATCH, 64), jnp.int32), (BATCH, 64, VOCAB)),
  ],
)
def test_experiment_configs_build(experiment, input_shape, num_outputs, x, out_shape):
  config = experiment.get_config().model
  for model_config in (config, config.to_dict()):  # ConfigDict and plain dict
    model = nnx.eval_shape(
      lambda: build_model(
        model_config, input_shape=input_shape, num_outputs=num_outputs, rngs=nnx.Rngs(0)
      )
    )
    graphdef, params = nnx.split(model, nnx.Param)
    logits = jax.eval_shape(lambda p, x: nnx.merge(graphdef, p)(x), params, x)
    assert logits.shape == out_shape
  assert config.name == experiment.get_config().model.name  # not consumed


@pytest.mark.parametrize('name', FAMILIES)
def test_models_hold_only_params(name):
  model = make(name, dropout=0.5, normalization='layernorm')
  x = make_input(name)
  model(x, train=True, rngs=nnx.Rngs(dropout=0))  # must not capture the rngs
  _, params, rest = nnx.split(model, nnx.Param, ...)
  assert jax.tree.leaves(params)
  assert not jax.tree.leaves(rest)
  assert not jax.tree.leaves(nnx.state(model, nnx.RngState))


def functional_loss(graphdef, params, x, key):
  logits = nnx.merge(graphdef, params)(x, train=True, rngs=nnx.Rngs(dropout=key))
  return jnp.mean(logits**2), logits


# cnn1d is left out to save compile time: CNN1D and CNN2D are the same ConvNet
# class, and test_remat_works_on_a_closed_over_model covers cnn1d's remat wiring.
@pytest.mark.parametrize('name', ['mlp', 'cnn2d', 'transformer'])
def test_vmapped_functional_init_apply_and_remat(name):
  """The training loop's pattern: init K seeds with vmap, apply/grad under jit+vmap.

  Also checks that remat=True is really checkpointed, and gives the same
  outputs and gradients as remat=False for the same parameters. Everything
  runs in one jitted function, without XLA's backend optimizations, because
  compilation dominates the run time; depth=1 for the same reason.
  """
  num_seeds = 3
  input_shape = DEFAULT_SHAPE[name]
  x = make_input(name)

  def init(remat, key):
    config = make_config(name, dropout=0.2, depth=1, remat=remat)
    model = build_model(
      config, input_shape=input_shape, num_outputs=num_outputs_for(name), rngs=nnx.Rngs(key)
    )
    return nnx.split(model, nnx.Param)

  graphdefs = {remat: nnx.eval_shape(lambda: init(remat, 0))[0] for remat in (False, True)}

  def loss_and_grad(graphdef, params, key):
    return jax.value_and_grad(functional_loss, argnums=1, has_aux=True)(graphdef, params, x, key)

  # XLA's backend optimizations take most of this program's compile time and matter to
  # none of what is checked (the numbers are compared within tolerances).
  @functools.partial(jax.jit, compiler_options={'xla_backend_optimization_level': 0})
  def init_and_grads(seeds, dropout_keys):
    params = jax.vmap(lambda key: init(False, key)[1])(seeds)
    results = {
      remat: jax.vmap(functools.partial(loss_and_grad, graphdef))(params, dropout_keys)
      for remat, graphdef in graphdefs.items()
    }
    return params, results

  seeds = jax.random.split(jax.random.key(0), num_seeds)
  dropout_keys = jax.random.split(jax.random.key(1), num_seeds)
  params, results = init_and_grads(seeds, dropout_keys)

  for leaf in jax.tree.leaves(params):
    assert leaf.shape[0] == num_seeds
  # Random initializers differ per seed; constant ones (biases, scales) cannot.
  random_leaves = [leaf for leaf in jax.tree.leaves(params) if np.std(leaf[0]) > 0]
  assert random_leaves
  for leaf in random_leaves:
    for i, j in itertools.combinations(range(num_seeds), 2):
      assert not np.allclose(leaf[i], leaf[j])

  (_, logits), grads = results[False]
  assert logits.shape == (num_seeds, *expected_shape(name, x.shape))
  for i, j in itertools.combinations(range(num_seeds), 2):
    assert_differ(logits[i], logits[j])
  assert all(np.any(g != 0) for g in jax.tree.leaves(grads))
  # Seed 1's slice is what an ordinary, unbatched, eager call gives.
  model_1 = make(name, dropout=0.2, depth=1)
  nnx.update(model_1, jax.tree.map(lambda leaf: leaf[1], params))
  single = model_1(x, train=True, rngs=nnx.Rngs(dropout=dropout_keys[1]))
  np.testing.assert_allclose(logits[1], single, rtol=1e-5, atol=1e-5)

  (_, remat_logits), remat_grads = results[True]
  np.testing.assert_allclose(remat_logits, logits, rtol=1e-5, atol=1e-6)
  jax.tree.map(
    lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), remat_grads, grads
  )
  for remat, graphdef in graphdefs.items():
    jaxpr = str(jax.make_jaxpr(lambda p: loss_and_grad(graphdef, p, dropout_keys[0]))(
      jax.tree.map(lambda leaf: leaf[0], params)
    ))
    assert ('remat' in jaxpr or 'checkpoint' in jaxpr) == remat


@pytest.mark.parametrize('name', FAMILIES)
def test_remat_works_on_a_closed_over_model(name):
  """nnx.remat's default graph_updates=True fails here; models/layers.py avoids it."""
  x = make_input(name)
  model = make(name, remat=True)
  traced = jax.make_jaxpr(lambda x: model(x))(x)  # raised TraceContextError
  assert 'remat' in str(traced) or 'checkpoint' in str(traced)
  jax.eval_shape(nnx.jit(lambda m, x: m(x)), model, x)  # raised AttributeError
