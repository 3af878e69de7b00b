r"""Trains one experiment on K seeds and writes its scorecard.

  python -m harness.main --config=experiments/mnist1d_mlp.py --workdir=/tmp/w \
      [--config.optimizer.learning_rate=3e-3] [--seeds=3] [--resume] [--eval_test]

Exit codes: 0 finished (status ok or diverged, see the scorecard), 1 the run failed
while training, 2 bad input (flags, config, workdir); bad input writes no scorecard.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from harness import scorecard as sc
from harness.train import ConfigError, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for scorecard, events, checkpoints.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Seeds trained together (vmapped) in this process.',
                              lower_bound=1)
_RESUME = flags.DEFINE_bool('resume', False, 'Continue from the latest checkpoint in workdir.')
_EVAL_TEST = flags.DEFINE_bool('eval_test', False,
                               'After training, score the test split into test_scorecard.json.')
_INPUTS = flags.DEFINE_string(
    'inputs', None, 'Run as an agent\'s trial: read the training data and the inputs to '
    'predict from this folder (no labels), write predictions and report.json, no scorecard.')


def fail(message: str, code: int = 2) -> None:
  """One line on stderr and a distinct exit code: bad input never looks like a result."""
  print(f'error: {message}', file=sys.stderr)
  sys.exit(code)


def _one_line(error: BaseException) -> str:
  text = ' '.join(str(error).split())
  if isinstance(error, (AttributeError, KeyError)):
    return f'unknown config key {text}'
  return text or type(error).__name__


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # absl raises flags.Error; config overrides raise their own types
    fail(_one_line(e))


def _config():
  """Loads the config file lazily (config_flags defers it) and reports a bad one in one line."""
  try:
    config = _CONFIG.value
    if config is not None:
      config.to_dict()  # a file that failed to load only raises when first touched
  except Exception as e:
    lines = str(e.__cause__ or e).strip().splitlines() or [type(e).__name__]
    fail(f'cannot load --config: {lines[-1].strip()}')
  if config is None:
    fail('--config is required')
  return config


def _workdir() -> Path:
  if not _WORKDIR.value:
    fail('--workdir is required')
  workdir = Path(_WORKDIR.value).absolute()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    fail(f'cannot create workdir {workdir}: {e.strerror}')
  if not os.access(workdir, os.W_OK | os.X_OK):
    fail(f'workdir {workdir} is not writable')
  return workdir


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  config = _config()
  workdir = _workdir()
  try:
    inputs = Path(_INPUTS.value).absolute() if _INPUTS.value else None
    card = train_and_evaluate(config, workdir, num_seeds=_SEEDS.value, resume=_RESUME.value,
                              eval_test=_EVAL_TEST.value, inputs_dir=inputs)
  except ConfigError as e:
    fail(str(e))
  except Exception as e:  # a crashed run still leaves a scorecard that says so
    logging.exception('training failed')
    if not _INPUTS.value:
      sc.write_json(workdir / sc.SCORECARD, {'status': 'failed', 'error': _one_line(e)})
    fail(f'training failed: {_one_line(e)}', code=1)
  if _INPUTS.value:
    print(f"trained {card['steps_completed']} steps; predictions in {workdir}")
    return
  print(f"status={card['status']} {card['metric']['name']}="
        f"{card['val_metric']['mean']:.4f}±{card['val_metric']['std']:.4f} "
        f"seeds={card['seeds']} train_seconds={card['train_seconds']:.1f} "
        f"scorecard={workdir / sc.SCORECARD}")


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
