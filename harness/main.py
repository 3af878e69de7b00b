r"""Trains one experiment on K seeds and writes its scorecard.

  python -m harness.main --config=experiments/mnist1d_mlp.py --workdir=/tmp/w \
      [--config.optimizer.learning_rate=3e-3] [--seeds=3] [--resume | --overwrite] \
      [--eval_test] [--verbosity=1] \
      [--members='[{"optimizer.learning_rate": 3e-3}, {"optimizer.weight_decay": 1e-4}]']

--members trains several candidates that differ only in the optimiser's traced values
(learning rate, weight decay, clipping norm) in one compiled program, on the same seeds;
each writes into DIR/member-<i>/ what a run alone writes into DIR. With --rungs=S1,S2
--rung_dir=RDIR (the agent's judge), at each rung step the members the judge names in
RDIR/rung-<step>.json stop training (harness.rungs).

Exit codes: 0 finished (status ok or diverged, see the scorecard), 1 the run failed
while training (the scorecard says so, or is absent when not even that could be written;
the traceback is in DIR/error.log), 2 bad input (flags, config, workdir): nothing in the
workdir is changed. An error is one `error:` line, the last on stderr; library log lines
(JAX, Orbax) reach stderr only with --verbosity=1.

Over several hosts (a multi-host TPU VM; harness.hosts says when the environment asks for
it), the same command runs once per host with the same workdir; process 0 writes the outputs.
"""

from __future__ import annotations

import collections
import contextlib
import json
import logging as py_logging
import os
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from harness import hosts
from harness import scorecard as sc
from harness.rungs import FileRungs, parse_steps
from harness.train import ERROR_LOG, MEMBER, ConfigError, is_output, train_and_evaluate

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Experiment config file.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for scorecard, events, checkpoints.')
_SEEDS = flags.DEFINE_integer('seeds', 1, 'Seeds trained together (vmapped) in this process.',
                              lower_bound=1)
_RESUME = flags.DEFINE_bool('resume', False, 'Continue from the latest checkpoint in workdir.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Delete what an earlier run wrote in workdir (and nothing else) before '
    'training; without it or --resume, a workdir that is not empty is refused.')
_EVAL_TEST = flags.DEFINE_bool('eval_test', False,
                               'After training, score the test split into test_scorecard.json.')
_MEMBERS = flags.DEFINE_string(
    'members', None, 'JSON list of members, each {traced config key: value}; they train '
    'together, each writing into workdir/member-<i>/.')
_RUNGS = flags.DEFINE_string(
    'rungs', None, 'With --members and --rung_dir: comma-separated evaluation steps where the '
    'judge may stop members.')
_RUNG_DIR = flags.DEFINE_string(
    'rung_dir', None, 'Where the judge writes rung-<step>.json, {"stop": [member indices]}.')
_INPUTS = flags.DEFINE_string(
    'inputs', None, 'Run as an agent\'s trial: read the training data and the inputs to '
    'predict from this folder (no labels), write predictions and report.json, no scorecard.')
# The harness's own code, as imported (log records carry these paths; the venv may lie
# beside it in the same folder).
_OWN_CODE = tuple(str(Path(__file__).absolute().parent.parent / package) + os.sep
                  for package in ('harness', 'models'))


def fail(message: str, code: int = 2) -> None:
  """One line on stderr and a distinct exit code: bad input never looks like a result."""
  print(f'error: {" ".join(message.split())}', file=sys.stderr)
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


def _names(names: list[str], shown: int = 3) -> str:
  more = f' and {len(names) - shown} more' if len(names) > shown else ''
  return ', '.join(repr(n) for n in names[:shown]) + more


def _workdir() -> Path:
  """The workdir, refused (changing nothing) when an earlier run's output would be mixed
  into this one's: only --resume continues it, only --overwrite replaces it."""
  if not _WORKDIR.value:
    fail('--workdir is required')
  if _RESUME.value and _OVERWRITE.value:
    fail('--resume continues the run in workdir and --overwrite replaces it: pass one')
  workdir = Path(_WORKDIR.value).absolute()
  try:
    workdir.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    fail(f'cannot create workdir {workdir}: {e.strerror}')
  if not os.access(workdir, os.R_OK | os.W_OK | os.X_OK):
    fail(f'workdir {workdir} is not readable and writable')
  entries = sorted(os.listdir(workdir))
  if entries and not _RESUME.value:
    if not _OVERWRITE.value:
      fail(f'workdir {workdir} is not empty ({_names(entries)}): pass --resume to continue '
           'its run, --overwrite to replace it, or use a new workdir')
    foreign = [name for name in entries if not is_output(name)]
    if foreign:
      fail(f'--overwrite deletes only what a run writes, and workdir {workdir} also holds '
           f'{_names(foreign)}: use a new workdir')
  return workdir


class _LibraryLines(py_logging.Filter):
  """Keeps library log lines off stderr unless --verbosity asks for them: Orbax writes ~60
  per checkpoint, and logs a full disk as tracebacks from its threads before the harness
  reports it, so an error's line would not be the last. Their warnings and errors are kept
  for a failed run's error.log."""

  def __init__(self) -> None:
    super().__init__()
    self.kept: collections.deque[py_logging.LogRecord] = collections.deque(maxlen=100)

  def filter(self, record: py_logging.LogRecord) -> bool:
    if record.pathname.startswith(_OWN_CODE) or logging.level_debug():
      return True
    if record.levelno >= py_logging.WARNING:
      self.kept.append(record)
    return False


def _keep_traceback(workdir: Path, library: _LibraryLines) -> Path | None:
  """The failure's traceback (after the library's warnings), in the workdir rather than on
  stderr, whose last line is the error; None when it cannot be written (a full disk)."""
  logging.debug('training failed', exc_info=True)  # on stderr too with --verbosity=1
  handler = logging.get_absl_handler()
  lines = [handler.format(record) for record in library.kept] + [traceback.format_exc()]
  path = workdir / ERROR_LOG
  try:
    sc.write_atomically(path, '\n'.join(lines).encode())
  except OSError:
    return None
  return path


def _record_failure(workdir: Path, error: str) -> bool:
  """The scorecard says the run failed; when even that cannot be written (a full disk),
  there is none, never an earlier one that says ok. False when none could be written."""
  with contextlib.suppress(OSError):
    (workdir / sc.TEST_SCORECARD).unlink(missing_ok=True)
  try:
    sc.write_json(workdir / sc.SCORECARD, {'status': 'failed', 'error': error})
  except OSError:
    with contextlib.suppress(OSError):
      (workdir / sc.SCORECARD).unlink(missing_ok=True)
    return False
  return True


def _members() -> list | None:
  if _MEMBERS.value is None:
    return None
  try:
    members = json.loads(_MEMBERS.value)
  except json.JSONDecodeError as e:
    fail(f'--members is not JSON: {e}')
  if not isinstance(members, list):
    fail('--members must be a JSON list of {config key: value} objects')
  return members


def _rung_steps(members: list | None) -> tuple[int, ...]:
  """--rungs, checked before the workdir is touched."""
  if (_RUNGS.value is None) != (_RUNG_DIR.value is None):
    fail('--rungs and --rung_dir go together')
  if _RUNGS.value is None:
    return ()
  if members is None:
    fail('--rungs needs --members: only a batch has members to stop')
  try:
    steps = parse_steps(_RUNGS.value)
  except ValueError as e:
    fail(str(e))
  return steps


def main(argv: list[str]) -> None:
  library = _LibraryLines()
  logging.get_absl_handler().addFilter(library)
  if len(argv) > 1:
    fail(f'unexpected arguments: {" ".join(argv[1:])}')
  try:
    hosts.initialize()
  except ValueError as e:
    fail(str(e))
  config = _config()
  members = _members()
  steps = _rung_steps(members)
  workdir = _workdir()
  rungs = FileRungs(Path(_RUNG_DIR.value).absolute(), steps, workdir) if steps else None
  try:
    inputs = Path(_INPUTS.value).absolute() if _INPUTS.value else None
    card = train_and_evaluate(config, workdir, num_seeds=_SEEDS.value, resume=_RESUME.value,
                              eval_test=_EVAL_TEST.value, inputs_dir=inputs,
                              overwrite=_OVERWRITE.value, members=members, rungs=rungs)
  except ConfigError as e:
    fail(str(e))
  except Exception as e:  # a crashed run still leaves a scorecard that says so
    error = _one_line(e)
    if not hosts.primary():  # process 0 records the run's failure; the others only say it
      fail(f'training failed: {error}', code=1)
    unrecorded = not _INPUTS.value and not _record_failure(workdir, error)
    log = _keep_traceback(workdir, library)
    fail(f'training failed: {error}' + ('; no scorecard could be written' if unrecorded else '')
         + (f' (traceback in {log})' if log else ''), code=1)
  if not hosts.primary():
    print(f'process {hosts.index()}: trained; process 0 wrote the outputs')
    return
  for i, result in enumerate(card.get('members', [card])):
    folder = workdir / f'{MEMBER}{i}' if members is not None else workdir
    if 'stopped_at' in result:
      print(f"stopped at the rung at step {result['stopped_at']}; predictions in {folder}")
      continue
    if _INPUTS.value:
      print(f"trained {result['steps_completed']} steps; predictions in {folder}")
      continue
    print(f"status={result['status']} {result['metric']['name']}="
          f"{result['val_metric']['mean']:.4f}±{result['val_metric']['std']:.4f} "
          f"seeds={result['seeds']} train_seconds={result['train_seconds']:.1f} "
          f"scorecard={folder / sc.SCORECARD}")


def _exit(code: int) -> None:
  """Ends the process without the interpreter's teardown (~0.8 s of a trial on a busy 2-core
  machine, most of it freeing XLA's programs and threads): by then every file the run writes
  is complete and closed (atomic renames, the event writer closed, checkpoint saves waited
  for), so only the wait is lost."""
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(code)


if __name__ == '__main__':
  try:
    app.run(main, flags_parser=parse_flags)
  except SystemExit as e:
    if e.code is None or isinstance(e.code, int):
      _exit(e.code or 0)
    raise
