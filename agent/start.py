"""Starting a research run, and resuming one: what `agent.main run` / `resume` and the
benchmarks share, so that a run starts the same way wherever it is started.

Every check comes first, before the run's folder, branch or worktree exist: the run id, the
experiment (in the charter's scope, committed, parsing and building in the sandbox as
committed) and the sandbox itself. Then, holding the run's lock for as long as the caller
drives it (one agent process per run), the journal opens with `run_started` (the run's
settings and the charter's, which `verify` replays) and the loop is built over it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import re
import sys
import tempfile
import zlib
from pathlib import Path
from typing import Any, Callable, Iterator, NamedTuple

from agent.charter import Charter, load_charter
from agent.loop import Executor, Loop, default_workers
from agent.proposing.bandit import SharedBandit
from agent.proposing.llm import LLMProposer
from agent.proposing.proposal import Proposer
from agent.recording import records, vcs
from agent.recording.journal import Journal
from agent.recording.records import RunConfig
from agent.recording.state import RunState
from agent.safety.confine import SandboxUnavailable, one_line, require_sandbox
from agent.safety.executor import TrialOutcome, run_batch, run_trial
from agent.safety.preflight import dataset_config

JOURNAL = 'journal.sqlite'
LOCK = 'agent.lock'
RUN_ID = re.compile(r'[A-Za-z0-9][A-Za-z0-9._-]{0,63}')
BatchExecutor = Callable[..., list[TrialOutcome]]
RAY_PIN = 'ray==2.60.0'  # pyproject.toml's `ray` extra


class UsageError(Exception):
  """Bad input from the user: reported in one line, exit code 2."""


@dataclasses.dataclass(frozen=True)
class Choices:
  """What the person starting a run chose on top of the charter; None takes the charter's."""
  proposer: str = 'heuristic'
  llm: dict[str, Any] | None = None  # the LLM proposer's settings, never its key
  seeds: int | None = None
  budget_trials: int | None = None
  budget_minutes: float | None = None
  budget_compute_seconds: float | None = None
  budget_tokens: int | None = None
  review: str = 'none'  # 'required': a winner waits for a person's approve / reject
  share_stats: str = ''  # an absolute path: the proposer statistics shared (opt-in)

  def config(self, run_id: str, experiment: str, start: str, charter: Charter) -> RunConfig:
    """The run's settings as the journal records them."""
    b = charter.budget
    pick = lambda chosen, default: default if chosen is None else chosen
    return RunConfig(run_id=run_id, experiment=experiment, proposer=self.proposer,
                     seeds=pick(self.seeds, charter.trial.seeds),
                     budget_trials=pick(self.budget_trials, b.trials),
                     budget_minutes=pick(self.budget_minutes, b.minutes),
                     budget_compute_seconds=pick(self.budget_compute_seconds, b.compute_seconds),
                     start_commit=start, budget_tokens=pick(self.budget_tokens, b.tokens),
                     review=self.review, llm=self.llm, share_stats=self.share_stats)


def check_run_id(run_id: str) -> str:
  """A run id names a folder under runs/ and a git branch: a strict pattern, checked before
  anything is written (no '..', no '/', no spaces)."""
  if not RUN_ID.fullmatch(run_id) or '..' in run_id or run_id.endswith(('.', '.lock')):
    raise UsageError(f'--run_id {run_id!r} must be 1-64 letters, digits, ".", "_" or "-", '
                     'starting with a letter or digit')
  return run_id


def existing_run(repo: Path, run_id: str) -> Path:
  """The folder of a run that has a journal."""
  run_dir = repo / 'runs' / check_run_id(run_id)
  if not (run_dir / JOURNAL).exists():
    raise UsageError(f'no run {run_id!r} under {repo / "runs"}')
  return run_dir


@contextlib.contextmanager
def exclusive(run_dir: Path) -> Iterator[None]:
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


@contextlib.contextmanager
def start_run(repo: Path, charter: Charter, experiment: str, run_id: str,
              choices: Choices = Choices(), *, say: Callable[[str], None],
              proposer: Proposer | None = None, execute: Executor = run_trial,
              execute_batch: BatchExecutor = run_batch) -> Iterator[Loop]:
  """A new run: checked, then begun under its lock; yields its loop.

  `proposer` stands in for the one the choices name (the benchmarks seed their own);
  `execute` and `execute_batch` for the local sandboxed trial runners (the benchmarks'
  in-process one, the Ray executor's: see `engine`).
  """
  experiment = Path(experiment).as_posix()
  if not (repo / experiment).is_file():
    raise UsageError(f'experiment {experiment} not found in {repo}')
  if not charter.is_editable(experiment):
    raise UsageError(f'experiment {experiment} is outside the charter\'s editable scope')
  check_sandbox(charter)
  run_dir = repo / 'runs' / check_run_id(run_id)
  _refuse_existing(run_dir)
  start = vcs.resolve(repo, 'HEAD')
  committed = vcs.file_at(repo, start, experiment)
  if committed is None:
    raise UsageError(f'experiment {experiment} is not committed at {start[:10]}: the run '
                     'starts from the last commit')
  if committed != (repo / experiment).read_text():
    print(f'note: {experiment} has uncommitted changes; the run starts from the committed '
          f'version at {start[:10]}', file=sys.stderr)
  _check_experiment(repo, start, experiment, charter)
  with exclusive(run_dir):
    _refuse_existing(run_dir)
    settings = {k: v for k, v in dataclasses.asdict(charter).items() if k != 'prose'}
    journal = Journal.create(run_dir / JOURNAL, records.RunStarted(
        choices.config(run_id, experiment, start, charter), settings))
    yield _loop(repo, run_dir, journal, charter, _replay(journal), proposer, execute,
                execute_batch, say)


@contextlib.contextmanager
def resume_run(repo: Path, run_id: str, *, say: Callable[[str], None],
               execute: Executor = run_trial,
               execute_batch: BatchExecutor = run_batch) -> Iterator[Loop | None]:
  """An earlier run, under its lock, with the charter as it is now; yields its loop, or None
  when the run has finished (there is nothing left to drive)."""
  run_dir = existing_run(repo, run_id)
  with exclusive(run_dir):
    journal = Journal.open(run_dir / JOURNAL)
    state = _replay(journal)
    charter = load_charter(repo / 'WORKSPACE.md')
    check_sandbox(charter)
    yield None if state.finished else _loop(repo, run_dir, journal, charter, state, None,
                                            execute, execute_batch, say)


def check_sandbox(charter: Charter) -> None:
  """Refuses to start (exit 2, one line) where the charter's sandbox cannot run."""
  try:
    require_sandbox(charter.trial)
  except SandboxUnavailable as e:
    raise UsageError(str(e)) from None


class Engine(NamedTuple):
  """The loop's `execute` and `execute_batch`, and how many trials it runs at once by
  default (--workers): this machine's share for the charter's [trial] cpus, or the Ray
  cluster's bundles."""
  execute: Executor
  execute_batch: BatchExecutor
  workers: int


@contextlib.contextmanager
def engine(name: str, charter: Charter, ray_address: str | None = None) -> Iterator[Engine]:
  """Where trials run: 'local' (this machine) or 'ray' (a Ray task each, on the cluster at
  `ray_address`, or on a local one started here and ended on the way out)."""
  if name == 'local':
    if ray_address:
      raise UsageError('--ray_address needs --executor=ray')
    yield Engine(run_trial, run_batch, default_workers(charter))
    return
  if name != 'ray':
    raise UsageError(f'unknown executor {name!r}: local or ray')
  try:
    from agent.safety import ray_executor
  except ImportError:
    raise UsageError(f'--executor=ray needs Ray: pip install "{RAY_PIN}" (make test and '
                     'make run install it)') from None
  try:
    executor = ray_executor.RayExecutor(charter.trial, ray_address)
  except (ValueError, ConnectionError, RuntimeError) as e:
    raise UsageError(f'--executor=ray: {one_line(str(e))}') from None
  # a cluster started here is this machine: its cores are the agent's too
  workers = executor.capacity() if ray_address else min(executor.capacity(),
                                                         default_workers(charter))
  try:
    yield Engine(executor.run_trial, executor.run_batch, max(1, workers))
  finally:
    executor.close()


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
  proposer = HeuristicProposer(stats_path=repo / 'runs' / 'proposer_stats.json',
                               seed=zlib.crc32(config.run_id.encode()))
  if config.share_stats:  # opted in: the counts only, under a lock
    proposer.bandit = SharedBandit(proposer.stats_path, config.share_stats)
  return proposer


def _refuse_existing(run_dir: Path) -> None:
  if (run_dir / JOURNAL).exists():
    raise UsageError(f'run {run_dir.name} already exists: use `resume --run_id={run_dir.name}`')


def _check_experiment(repo: Path, start: str, experiment: str, charter: Charter) -> None:
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


def _replay(journal: Journal) -> RunState:
  try:
    return RunState.replay(journal)
  except ValueError as e:
    raise UsageError(f'the run cannot be resumed: {e}') from None


def _loop(repo: Path, run_dir: Path, journal: Journal, charter: Charter, state: RunState,
          proposer: Proposer | None, execute: Executor, execute_batch: BatchExecutor,
          say: Callable[[str], None]) -> Loop:
  """The loop over the run's journal, from the state it replays; an LLM proposer books its
  usage into the run's budget and reads the editable files from the run's worktree."""
  proposer = proposer or make_proposer(state.config, repo)
  loop = Loop(repo, run_dir, charter, proposer, journal, state, execute=execute,
              execute_batch=execute_batch, print_fn=say)
  if isinstance(proposer, LLMProposer):
    proposer.on_usage = loop.record_usage
    proposer.worktree = loop.worktree.path  # it shows the model every editable file there
  return loop
