"""TensorBoard event files parse back with scalars and an HParams session summary."""

from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from harness.train import train_and_evaluate


def load_events(logdir):
  acc = event_accumulator.EventAccumulator(str(logdir), size_guidance={'scalars': 0})
  acc.Reload()
  return acc


def test_events_hold_curves_and_hparams(tmp_path, mnist1d_tiny):
  train_and_evaluate(mnist1d_tiny, tmp_path, num_seeds=2)
  acc = load_events(tmp_path)
  tags = set(acc.Tags()['scalars'])
  assert {'train/loss', 'train/grad_norm', 'val/loss', 'val/accuracy', 'perf/step_ms',
          'hparams/val_metric'} <= tags
  assert [e.step for e in acc.Scalars('val/accuracy')] == [20, 40, 60]
  assert len(acc.Scalars('train/loss')) == 60
  content = acc.PluginTagToContent('hparams')
  start = plugin_data_pb2.HParamsPluginData.FromString(
      content['_hparams_/session_start_info']).session_start_info
  assert start.hparams['optimizer.learning_rate'].number_value == 1e-2
  assert start.hparams['model.name'].string_value == 'mlp'
  assert '_hparams_/experiment' in content


def test_tensorflow_is_not_installed():
  import importlib.util
  assert importlib.util.find_spec('tensorflow') is None
