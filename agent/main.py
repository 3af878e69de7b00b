r"""The research agent's command line.

  python -m agent.main run --experiment=experiments/mnist1d_mlp.py \
      [--budget_trials=N] [--budget_minutes=M] [--seeds=K] [--run_id=ID] [--review=required] \
      [--proposer=heuristic | --proposer=llm --llm_base_url=URL --llm_model=NAME \
       [--llm_api=openai|anthropic] [--budget_tokens=N]] [--executor=ray [--ray_address=ADDR]] \
      [--workers=W]
  python -m agent.main resume|status|log|verify|review|report --run_id=ID
  python -m agent.main approve N --run_id=ID
  python -m agent.main reject N --why="..." --run_id=ID
  python -m agent.main tensorboard --run_id=ID   # writes runs/<id>/tensorboard/ again
  python -m agent.main init DIR   # makes the git repository at DIR a workspace (--workspace=DIR)

Runs live in <workspace>/runs/<run-id>/: the journal, the git worktree of branch
agent/<run-id>, and one folder per trial (scorecards, TensorBoard events, checkpoints).

This module is flags, output and exit codes; starting and resuming a run (the checks, the
lock, the journal's first record, the loop) is `agent.start`'s, which the benchmarks share.
What the run and the reports print quotes proposers and trials (hypotheses, reasons,
paths), so it reaches the terminal only through `untrusted.terminal_safe`.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from absl import app, flags

from agent import start, workspace
from agent.charter import CharterError, load_charter
from agent.loop import BaselineError, Loop, RunHalted
from agent.proposing.llm_client import LLMFatalError
from agent.recording import audit, records, report, review, vcs
from agent.recording import progress, tb_view
from agent.recording.journal import Journal
from agent.start import UsageError
from agent.untrusted import terminal_safe
from harness.datasets import DataCacheError

COMMANDS = ('run', 'resume', 'status', 'log', 'verify', 'review', 'report', 'approve',
            'reject', 'tensorboard', 'init')

_EXPERIMENT = flags.DEFINE_string('experiment', None, 'Experiment config, relative to the '
                                  'workspace (run only).')
_RUN_ID = flags.DEFINE_string('run_id', None, 'Run name; default: the start time.')
_WORKSPACE = flags.DEFINE_string('workspace', '.', 'The git repository the agent works on.')
_PROPOSER = flags.DEFINE_enum('proposer', 'heuristic', ['heuristic', 'llm'],
                              'Who proposes edits.')
_REVIEW = flags.DEFINE_enum('review', 'none', ['none', 'required'], 'required: a winning '
                            'candidate waits for `approve N` / `reject N` before it is kept.')
_WHY = flags.DEFINE_string('why', '', 'The reason for `reject N` (or a note on `approve N`).')
_BUDGET_TOKENS = flags.DEFINE_integer('budget_tokens', None, 'LLM tokens (input + output) for '
                                      'the whole run; default: the charter\'s.', lower_bound=0)
_LLM_API = flags.DEFINE_enum('llm_api', 'openai', ['openai', 'anthropic'], 'openai: any '
                             'OpenAI-compatible chat endpoint; anthropic: the Messages API.')
_LLM_BASE_URL = flags.DEFINE_string('llm_base_url', None, 'The LLM endpoint, e.g. '
                                    'http://127.0.0.1:8000/v1.')
_LLM_MODEL = flags.DEFINE_string('llm_model', None, 'The model name the endpoint expects.')
_LLM_KEY_ENV = flags.DEFINE_string('llm_api_key_env', None, 'The environment variable that '
                                   'holds the key; default OPENAI_API_KEY / ANTHROPIC_API_KEY.')
_LLM_PRICE_IN = flags.DEFINE_float('llm_price_input', None, 'USD per million input tokens.')
_LLM_PRICE_OUT = flags.DEFINE_float('llm_price_output', None, 'USD per million output tokens.')
_LLM_TIMEOUT = flags.DEFINE_float('llm_timeout_s', 120.0, 'Seconds per LLM request.')
_SEEDS = flags.DEFINE_integer('seeds', None, 'Seeds per trial; default: the charter\'s.',
                              lower_bound=2)
_BUDGET_TRIALS = flags.DEFINE_integer('budget_trials', None, 'Default: the charter\'s.',
                                      lower_bound=1)
_BUDGET_MINUTES = flags.DEFINE_float('budget_minutes', None, 'Default: the charter\'s.',
                                     lower_bound=0.1)
_BUDGET_COMPUTE = flags.DEFINE_float('budget_compute_seconds', None,
                                     'Trial process seconds; default: the charter\'s.')
_EXECUTOR = flags.DEFINE_enum('executor', 'local', ['local', 'ray'], 'Where trials run '
                               '(run, resume): local, or ray: each trial a Ray task with the '
                               'charter\'s [trial] bundle (cpus, gpus, tpus, memory_mb).')
_RAY_ADDRESS = flags.DEFINE_string('ray_address', None, 'The Ray cluster to run trials on '
                                   '(e.g. auto, or HOST:6379); default: a local one started '
                                   'for the run.')
_WORKERS = flags.DEFINE_integer('workers', None, 'Trials in flight at once (run, resume), '
                                'each decided as it ends against the incumbent it was '
                                'proposed on; default: the usable cores less one, over the '
                                'charter\'s [trial] cpus (at least 1).', lower_bound=1)
_SHARE_STATS = flags.DEFINE_string('share_stats', None, 'Opt in to sharing the offline '
                                   'proposer\'s learned statistics (its operator counts per '
                                   'task and model family, nothing else) with other workspaces '
                                   'through this file, locked while written; default: each '
                                   'workspace keeps its own (runs/proposer_stats.json).')
_FINAL_EVAL = flags.DEFINE_bool('final_eval', True, 'Evaluate start and final on fresh seeds '
                                'and the test split at the end.')


def show(text: str, file: TextIO | None = None) -> None:
  """Prints text that quotes the journal, a proposer or a trial, with nothing in it that
  the terminal would act on."""
  print(terminal_safe(text), file=file)


def say(line: str) -> None:
  """The loop's progress line; text it quotes can neither steer the terminal nor start a
  line that would pass for one of the loop's own ("[trial 3] ACCEPTED")."""
  print(terminal_safe(line, indent='    '), flush=True)


def _repo() -> Path:
  try:
    return vcs.repo_root(Path(_WORKSPACE.value).absolute())
  except vcs.VcsError as e:
    raise UsageError(f'--workspace is not a git repository: {e}') from e


def _run_id() -> str:
  if not _RUN_ID.value:
    raise UsageError('--run_id is required')
  return _RUN_ID.value


def _run_dir(repo: Path) -> Path:
  return start.existing_run(repo, _run_id())


def _choices() -> start.Choices:
  return start.Choices(proposer=_PROPOSER.value, llm=_llm_settings(), seeds=_SEEDS.value,
                       budget_trials=_BUDGET_TRIALS.value, budget_minutes=_BUDGET_MINUTES.value,
                       budget_compute_seconds=_BUDGET_COMPUTE.value,
                       budget_tokens=_BUDGET_TOKENS.value, review=_REVIEW.value,
                       share_stats=_share_stats())


def _share_stats() -> str:
  if not _SHARE_STATS.value:
    return ''
  if _PROPOSER.value != 'heuristic':
    raise UsageError('--share_stats shares the heuristic proposer\'s statistics; the LLM '
                     'proposer learns none')
  return str(Path(_SHARE_STATS.value).expanduser().absolute())


def _llm_settings() -> dict | None:
  """The LLM proposer's settings as the journal keeps them: everything but the key."""
  if _PROPOSER.value != 'llm':
    return None
  if not _LLM_BASE_URL.value or not _LLM_MODEL.value:
    raise UsageError('--proposer=llm needs --llm_base_url and --llm_model')
  return {'api': _LLM_API.value, 'base_url': _LLM_BASE_URL.value, 'model': _LLM_MODEL.value,
          'key_env': _LLM_KEY_ENV.value, 'price_input': _LLM_PRICE_IN.value,
          'price_output': _LLM_PRICE_OUT.value, 'timeout_s': _LLM_TIMEOUT.value}


def cmd_run() -> int:
  repo = _repo()
  charter = load_charter(repo / 'WORKSPACE.md')
  if not _EXPERIMENT.value:
    raise UsageError('--experiment is required')
  run_id = _RUN_ID.value or time.strftime('%Y%m%d-%H%M%S')
  if _WORKERS.value and _WORKERS.value > 1 and _REVIEW.value == 'required':
    raise UsageError('--workers above 1 does not combine with --review=required: a winner '
                     'waits for a person, and the trials beside it would be judged meanwhile')
  with (start.engine(_EXECUTOR.value, charter, _RAY_ADDRESS.value) as (execute, batch, workers),
        start.start_run(repo, charter, _EXPERIMENT.value, run_id, _choices(), say=say,
                        execute=execute, execute_batch=batch) as loop):
    return _drive(loop, workers)


def cmd_resume() -> int:
  repo, run_id = _repo(), _run_id()
  charter = load_charter(repo / 'WORKSPACE.md')
  with (start.engine(_EXECUTOR.value, charter, _RAY_ADDRESS.value) as (execute, batch, workers),
        start.resume_run(repo, run_id, say=say, execute=execute, execute_batch=batch) as loop):
    if loop is None:  # finished: nothing to drive
      journal, run_dir = _journal(), _run_dir(repo)
      show(report.summary(journal, f'agent/{run_id}', str(run_dir)))
      _write_report(repo, journal, run_dir)
      return 0
    return _drive(loop, workers)


def _drive(loop: Loop, workers: int) -> int:
  """The loop, watched: a progress line, and the TensorBoard view after each trial;
  `workers`: the engine's default for --workers."""
  loop.workers = 1 if loop.config.review == 'required' else (_WORKERS.value or workers)
  loop.final_eval = _FINAL_EVAL.value
  if loop.workers > 1:
    say(f'[workers] up to {loop.workers} trials in flight')
  with progress.watching(loop.run_dir, start.JOURNAL, tb_view.write):
    return _run_loop(loop)


def _run_loop(loop: Loop) -> int:
  """Runs the loop to a stop, then (unless a winner awaits review) the final evaluation;
  every way out is recorded in the journal before the exit code says it."""
  state, journal, run_id = loop.state, loop.journal, loop.config.run_id
  try:
    reason = loop.run()
    say(f'[stop] {reason}')
    if state.awaiting_review is not None:  # no final evaluation until a person decides
      loop.end_session(reason)
      show(review.describe(journal))
      _write_report(loop.repo, journal, loop.run_dir)
      return 0
    if _FINAL_EVAL.value:
      loop.final_evaluation()
    journal.write(records.RunFinished(reason=reason))
    loop.end_session(reason)
  except (BaselineError, RunHalted, LLMFatalError, DataCacheError) as e:
    loop.end_session(f'stopped: {e}')
    show(f'error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    loop.end_session('interrupted')
    print(f'\ninterrupted: recorded; continue with `python -m agent.main resume '
          f'--run_id={run_id}`', file=sys.stderr)
    return 130
  print()
  show(report.summary(journal, f'agent/{run_id}', str(loop.run_dir)))
  _write_report(loop.repo, journal, loop.run_dir)
  return 0


def _write_report(repo: Path, journal: Journal, run_dir: Path) -> None:
  """The end of a run writes its HTML report; the run is recorded whatever happens here, so
  a report that cannot be written is a warning, and `report` writes it again."""
  try:
    show(f'Report: {_report(repo, journal, run_dir)}')
  except Exception as e:  # noqa: BLE001 - the run itself is complete and recorded
    show(f'warning: the report was not written ({type(e).__name__}: {e}); write it with '
         f'`python -m agent.main report --run_id={run_dir.name}`', file=sys.stderr)


def _journal() -> Journal:
  return Journal.open(_run_dir(_repo()) / start.JOURNAL)


def cmd_status() -> int:
  show(report.status(_journal()))
  line = progress.status_line(_run_dir(_repo()), start.JOURNAL)
  if line:
    show(f'now: {line}')
  return 0


def cmd_tensorboard() -> int:
  folder = tb_view.write(_journal(), _run_dir(_repo()))
  show(f'TensorBoard view written: tensorboard --logdir {folder}')
  return 0


def cmd_log() -> int:
  show(report.log(_journal()))
  return 0


def cmd_verify() -> int:
  problem = audit.verify_run(_repo(), _journal())
  show(problem or 'run verified: the hash chain holds and matches its anchor in git, every '
        'verdict follows from its recorded evidence under the charter\'s rule, every commit and '
        'ref carries its recorded diff, every recorded metric matches its scorecard')
  return 1 if problem else 0


def cmd_review() -> int:
  show(review.describe(_journal()))
  return 0


def _report(repo: Path, journal: Journal, run_dir: Path) -> Path:
  """Writes the run's HTML report; imported here, as only the commands that write it should
  pay for matplotlib and jinja2 (~0.5 s a command)."""
  from agent.recording import html_report
  return html_report.write(repo, journal, run_dir)


def cmd_report() -> int:
  repo = _repo()
  show(f'Report: {_report(repo, _journal(), _run_dir(repo))}')
  return 0


def _decide(argv: list[str], approved: bool) -> int:
  if len(argv) != 3 or not argv[2].isdigit():
    raise UsageError(f'usage: {argv[1]} N --run_id=ID (N: the trial number `review` shows)')
  repo = _repo()
  run_dir = _run_dir(repo)
  with start.exclusive(run_dir):
    show(review.decide(_journal(), repo, run_dir, int(argv[2]), approved, _WHY.value))
  return 0


def cmd_init(argv: list[str]) -> int:
  if len(argv) != 3:
    raise UsageError('usage: init DIR (DIR: an existing git repository)')
  for line in workspace.init(Path(argv[2])):
    show(line)
  return 0


def main(argv: list[str]) -> None:
  try:
    if len(argv) < 2 or argv[1] not in COMMANDS:
      raise UsageError(f'expected one command of {", ".join(COMMANDS)}, got {argv[1:]}')
    if argv[1] == 'init':
      sys.exit(cmd_init(argv))
    if argv[1] in ('approve', 'reject'):
      sys.exit(_decide(argv, approved=argv[1] == 'approve'))
    if len(argv) != 2:
      raise UsageError(f'{argv[1]} takes no arguments besides flags, got {argv[2:]}')
    sys.exit(globals()[f'cmd_{argv[1]}']())
  except (UsageError, CharterError, vcs.VcsError, review.ReviewError,
          workspace.InitError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
