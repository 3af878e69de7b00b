r"""The research agent's command line.

  python -m agent.main run --experiment=experiments/mnist1d_mlp.py \
      [--budget_trials=N] [--budget_minutes=M] [--seeds=K] [--run_id=ID] [--review=required] \
      [--proposer=heuristic | --proposer=llm --llm_base_url=URL --llm_model=NAME \
       [--llm_api=openai|anthropic] [--budget_tokens=N]]
  python -m agent.main resume|status|log|verify|review --run_id=ID
  python -m agent.main approve N --run_id=ID
  python -m agent.main reject N --why="..." --run_id=ID

Runs live in <workspace>/runs/<run-id>/: the journal, the git worktree of branch
agent/<run-id>, and one folder per trial (scorecards, TensorBoard events, checkpoints).

What the run and the reports print quotes proposers and trials (hypotheses, reasons,
paths), so it reaches the terminal only through `untrusted.terminal_safe`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import sys
import tempfile
import time
import zlib
from pathlib import Path
from typing import Iterator, TextIO

from absl import app, flags

from agent.charter import CharterError, load_charter
from agent.loop import BaselineError, Loop, RunHalted
from agent.proposing.llm import LLMProposer
from agent.proposing.llm_client import LLMFatalError
from agent.proposing.proposal import Proposer
from agent.recording import audit, report, review, vcs
from agent.recording.journal import Journal
from agent.recording.state import RunConfig, RunState
from agent.safety.confine import SandboxUnavailable, require_sandbox
from agent.safety.preflight import dataset_config
from agent.untrusted import terminal_safe

COMMANDS = ('run', 'resume', 'status', 'log', 'verify', 'review', 'approve', 'reject')

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
_FINAL_EVAL = flags.DEFINE_bool('final_eval', True, 'Evaluate start and final on fresh seeds '
                                'and the test split at the end.')


LOCK = 'agent.lock'


class UsageError(Exception):
  """Bad input from the user: reported in one line, exit code 2."""


def show(text: str, file: TextIO | None = None) -> None:
  """Prints text that quotes the journal, a proposer or a trial, with nothing in it that
  the terminal would act on."""
  print(terminal_safe(text), file=file)


def say(line: str) -> None:
  """The loop's progress line; text it quotes can neither steer the terminal nor start a
  line that would pass for one of the loop's own ("[trial 3] ACCEPTED")."""
  print(terminal_safe(line, indent='    '), flush=True)


def make_proposer(config: RunConfig, repo: Path) -> Proposer:
  """The run's proposer, rebuilt from its recorded settings (an LLM's key from the env)."""
  if config.proposer == 'llm':
    from agent.proposing.llm_client import LLMClient
    s = config.llm or {}
    try:
      client = LLMClient(s['api'], s['base_url'], s['model'], key_env=s['key_env'],
                         timeout_s=s['timeout_s'])
    except (KeyError, ValueError) as e:
      raise UsageError(f'the LLM proposer\'s settings are not usable: {e}') from e
    return LLMProposer(client, input_price_per_mtok=s['price_input'],
                       output_price_per_mtok=s['price_output'])
  from agent.proposing.heuristic import HeuristicProposer
  if config.proposer != 'heuristic':
    raise UsageError(f'unknown proposer {config.proposer!r}')
  return HeuristicProposer(stats_path=repo / 'runs' / 'proposer_stats.json',
                           seed=zlib.crc32(config.run_id.encode()))


def _repo() -> Path:
  try:
    return vcs.repo_root(Path(_WORKSPACE.value).absolute())
  except vcs.VcsError as e:
    raise UsageError(f'--workspace is not a git repository: {e}') from e


RUN_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,63}')


def _check_run_id(run_id: str) -> str:
  """A run id names a folder under runs/ and a git branch: a strict pattern, checked before
  anything is written (no '..', no '/', no spaces)."""
  if not RUN_ID.fullmatch(run_id) or '..' in run_id or run_id.endswith(('.', '.lock')):
    raise UsageError(f'--run_id {run_id!r} must be 1-64 letters, digits, ".", "_" or "-", '
                     'starting with a letter or digit')
  return run_id


def _run_dir(repo: Path, must_exist: bool) -> Path:
  if not _RUN_ID.value:
    raise UsageError('--run_id is required')
  run_dir = repo / 'runs' / _check_run_id(_RUN_ID.value)
  if must_exist and not (run_dir / 'journal.sqlite').exists():
    raise UsageError(f'no run {_RUN_ID.value!r} under {repo / "runs"}')
  return run_dir


def cmd_run() -> int:
  repo = _repo()
  charter = load_charter(repo / 'WORKSPACE.md')
  if not _EXPERIMENT.value:
    raise UsageError('--experiment is required')
  experiment = Path(_EXPERIMENT.value).as_posix()
  if not (repo / experiment).is_file():
    raise UsageError(f'experiment {experiment} not found in {repo}')
  if not charter.is_editable(experiment):
    raise UsageError(f'experiment {experiment} is outside the charter\'s editable scope')
  _check_sandbox(charter)
  run_id = _check_run_id(_RUN_ID.value or time.strftime('%Y%m%d-%H%M%S'))
  run_dir = repo / 'runs' / run_id
  if (run_dir / 'journal.sqlite').exists():
    raise UsageError(f'run {run_id} already exists: use `resume --run_id={run_id}`')
  start = vcs.resolve(repo, 'HEAD')
  committed = vcs.file_at(repo, start, experiment)
  if committed is None:
    raise UsageError(f'experiment {experiment} is not committed at {start[:10]}: the run '
                     'starts from the last commit')
  if committed != (repo / experiment).read_text():
    print(f'note: {experiment} has uncommitted changes; the run starts from the committed '
          f'version at {start[:10]}', file=sys.stderr)
  llm = _llm_settings()
  _check_experiment(repo, start, experiment, charter)
  with _exclusive(run_dir):
    if (run_dir / 'journal.sqlite').exists():
      raise UsageError(f'run {run_id} already exists: use `resume --run_id={run_id}`')
    return _start_run(repo, run_dir, run_id, experiment, start, charter, llm)


def _start_run(repo: Path, run_dir: Path, run_id: str, experiment: str, start: str,
               charter, llm: dict | None) -> int:
  b = charter.budget
  config = RunConfig(run_id=run_id, experiment=experiment, proposer=_PROPOSER.value,
                     seeds=_SEEDS.value or charter.trial.seeds,
                     budget_trials=_BUDGET_TRIALS.value or b.trials,
                     budget_minutes=_BUDGET_MINUTES.value or b.minutes,
                     budget_compute_seconds=(b.compute_seconds if _BUDGET_COMPUTE.value is None
                                             else _BUDGET_COMPUTE.value),
                     start_commit=start,
                     budget_tokens=(b.tokens if _BUDGET_TOKENS.value is None
                                    else _BUDGET_TOKENS.value),
                     review=_REVIEW.value, llm=llm)
  journal = Journal.open(run_dir / 'journal.sqlite')
  settings = {k: v for k, v in dataclasses.asdict(charter).items() if k != 'prose'}
  journal.append('run_started', {'config': dataclasses.asdict(config), 'charter': settings})
  return _drive(repo, run_dir, journal)


@contextlib.contextmanager
def _exclusive(run_dir: Path) -> Iterator[None]:
  """One agent process per run: an advisory lock held for the life of the process (the
  kernel drops it when the process dies, kill -9 included); a second one is refused."""
  run_dir.mkdir(parents=True, exist_ok=True)
  fd = os.open(run_dir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise UsageError(f'run {run_dir.name} is in use by another agent process: wait for it '
                     'to end, or stop it, then try again') from None
  try:
    yield
  finally:
    os.close(fd)


def _check_experiment(repo: Path, start: str, experiment: str, charter) -> None:
  """The experiment must parse and build (in the sandbox, as committed) before a run, its
  branch or its worktree exist: a broken one is bad input, exit 2, nothing made."""
  try:
    compile(vcs.show_file(repo, start, experiment), experiment, 'exec', dont_inherit=True)
  except SyntaxError as e:
    raise UsageError(f'{experiment}:{e.lineno or 1}: syntax error: {e.msg}') from None
  with tempfile.TemporaryDirectory(prefix='agent-check-') as folder:
    vcs.export(repo, start, Path(folder))
    try:
      dataset_config(Path(folder), experiment, charter.trial)
    except ValueError as e:
      raise UsageError(str(e)) from None


def _check_sandbox(charter) -> None:
  """Refuses to start (exit 2, one line) where the charter's sandbox cannot run."""
  try:
    require_sandbox(charter.trial)
  except SandboxUnavailable as e:
    raise UsageError(str(e)) from None


def _llm_settings() -> dict | None:
  """The LLM proposer's settings as the journal keeps them: everything but the key."""
  if _PROPOSER.value != 'llm':
    return None
  if not _LLM_BASE_URL.value or not _LLM_MODEL.value:
    raise UsageError('--proposer=llm needs --llm_base_url and --llm_model')
  return {'api': _LLM_API.value, 'base_url': _LLM_BASE_URL.value, 'model': _LLM_MODEL.value,
          'key_env': _LLM_KEY_ENV.value, 'price_input': _LLM_PRICE_IN.value,
          'price_output': _LLM_PRICE_OUT.value, 'timeout_s': _LLM_TIMEOUT.value}


def cmd_resume() -> int:
  repo = _repo()
  run_dir = _run_dir(repo, must_exist=True)
  with _exclusive(run_dir):
    return _drive(repo, run_dir, Journal.open(run_dir / 'journal.sqlite'))


def _drive(repo: Path, run_dir: Path, journal: Journal) -> int:
  try:
    state = RunState.replay(journal)
  except ValueError as e:
    raise UsageError(f'the run cannot be resumed: {e}') from None
  charter = load_charter(repo / 'WORKSPACE.md')
  _check_sandbox(charter)
  branch = f'agent/{state.config.run_id}'
  if state.finished:
    show(report.summary(journal, branch, str(run_dir)))
    return 0
  proposer = make_proposer(state.config, repo)
  loop = Loop(repo, run_dir, charter, proposer, journal, state,
              print_fn=say)
  if isinstance(proposer, LLMProposer):
    proposer.on_usage = loop.record_usage
  try:
    reason = loop.run()
    say(f'[stop] {reason}')
    if state.awaiting_review is not None:  # no final evaluation until a person decides
      loop.end_session(reason)
      show(review.describe(journal))
      return 0
    if _FINAL_EVAL.value:
      loop.final_evaluation()
    journal.append('run_finished', {'reason': reason})
    loop.end_session(reason)
  except (BaselineError, RunHalted, LLMFatalError) as e:
    loop.end_session(f'stopped: {e}')
    show(f'error: {e}', file=sys.stderr)
    return 1
  except KeyboardInterrupt:
    loop.end_session('interrupted')
    print(f'\ninterrupted: recorded; continue with `python -m agent.main resume '
          f'--run_id={state.config.run_id}`', file=sys.stderr)
    return 130
  print()
  show(report.summary(journal, branch, str(run_dir)))
  return 0


def _journal() -> Journal:
  return Journal.open(_run_dir(_repo(), must_exist=True) / 'journal.sqlite')


def cmd_status() -> int:
  show(report.status(_journal()))
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


def _decide(argv: list[str], approved: bool) -> int:
  if len(argv) != 3 or not argv[2].isdigit():
    raise UsageError(f'usage: {argv[1]} N --run_id=ID (N: the trial number `review` shows)')
  repo = _repo()
  run_dir = _run_dir(repo, must_exist=True)
  with _exclusive(run_dir):
    show(review.decide(_journal(), repo, run_dir, int(argv[2]), approved, _WHY.value))
  return 0


def main(argv: list[str]) -> None:
  try:
    if len(argv) < 2 or argv[1] not in COMMANDS:
      raise UsageError(f'expected one command of {", ".join(COMMANDS)}, got {argv[1:]}')
    if argv[1] in ('approve', 'reject'):
      sys.exit(_decide(argv, approved=argv[1] == 'approve'))
    if len(argv) != 2:
      raise UsageError(f'{argv[1]} takes no arguments besides flags, got {argv[2:]}')
    sys.exit(globals()[f'cmd_{argv[1]}']())
  except (UsageError, CharterError, vcs.VcsError, review.ReviewError) as e:
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
