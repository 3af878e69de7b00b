"""The research loop: observe, propose, guard, edit, run, decide, record; then evaluate once.

All state lives in the run's journal and its git worktree; nothing else is trusted on
resume. `RunState.replay` rebuilds where the run stands from the journal alone, so a run
killed at any moment (even kill -9 inside a trial) continues without losing or
double-counting a trial, and the worktree is reset to the incumbent the journal names.
"""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from concurrent import futures
from pathlib import Path
from typing import Any, Callable, Mapping

import ml_collections

from agent.candidate import BUDGET, SCREEN_FIRST_SEED, Budget, CandidateJudge
from agent.charter import Charter
from agent.editing import batching, knobs
from agent.judging import decide as decide_lib
from agent.judging import rungs
from agent.proposing.proposal import NoProposal, Observation, Proposal, ProposalFailed, Proposer
from agent.recording import pooled_noise, records, vcs
from agent.recording.journal import Journal
from agent.recording.records import ArmRecord
from agent.recording.state import Heartbeat, RunState, TrialSummary
from agent.safety import guard
from agent.safety.executor import TrialOutcome, TrialSpec, run_batch, run_trial
from agent.safety.preflight import dataset_config, import_check
from agent.transfer import TransferCheck, TransferError
from agent.untrusted import one_line, terminal_safe
from harness import scoring, trial_inputs
from harness.scorecard import SCORECARD, TEST_SCORECARD, read_json

FINAL_FIRST_SEED = 1_000_000  # never used during the search
# The final evaluation's reserve: its two runs' measured wall time times this (it also
# predicts the test split, and its start-up is not the search's warm one).
FINAL_RESERVE_FACTOR = 1.5
MIN_RUN_S = 30.0  # a run is never started with less time than this
# The workspace's JAX compilation cache, beside the runs (a run id starts with a letter or a
# digit, so no run is named so); each trial sees only its own code's folder in it.
COMPILE_CACHE = '_compile-cache'
Executor = Callable[..., TrialOutcome]


class BaselineError(RuntimeError):
  """The starting point itself does not train: nothing can be compared against it."""


class RunHalted(RuntimeError):
  """Something the run relies on changed under it (the repository's git settings): it stops
  before any further git command could run what was planted."""


class Loop:
  """Runs one research run in `run_dir`; the proposer is the only part that varies."""

  def __init__(self, repo: Path, run_dir: Path, charter: Charter, proposer: Proposer,
               journal: Journal, state: RunState, *, execute: Executor = run_trial,
               execute_batch: Callable[..., list[TrialOutcome]] = run_batch,
               print_fn: Callable[[str], None] = lambda text: print(terminal_safe(text)),
               workers: int = 1):
    self.repo, self.run_dir, self.charter = repo, run_dir, charter
    self.workers = workers  # trials in flight at once (--workers); 1: one after another
    self.final_eval = True  # False (--nofinal_eval): no time is kept back for it
    self.proposer, self.journal, self.state = proposer, journal, state
    self.execute, self.execute_batch, self.say = execute, execute_batch, print_fn
    self.config = state.config
    journal.anchor_with(vcs.anchor_writer(repo, self.config.run_id))
    self.worktree = vcs.create_worktree(repo, run_dir / 'worktree', f'agent/{self.config.run_id}',
                                        start=self.config.start_commit)
    self.session_start = time.monotonic()
    self.direction = 'max'
    self.pending_base: str | None = None  # the incumbent the interrupted proposals were for
    session = self.journal.write(records.SessionStarted(pid=os.getpid()))
    self.heartbeat = Heartbeat(run_dir, session.seq)
    self.data: dict[str, tuple[Path, trial_inputs.Targets]] = {}  # experiment -> its data
    self._pinning = threading.Lock()  # another experiment's data, pinned once
    self.git_digest = vcs.protected_config_digest(repo)
    self.judge = CandidateJudge(repo, run_dir, self.worktree.path, charter, state, journal,
                                self._run, self._run_batch, self._other_data,
                                lambda text: self.say(text),
                                Budget(self._timeout, self.search_left,
                                       lambda: self._measured_runs()[1]))
    self.transfer = TransferCheck(repo, run_dir, charter, state, journal, self._run,
                                  self._other_data, lambda text: self.say(text))
    self.judge.transfer = self.transfer
    self.transfer.budget = self.judge.budget  # a transfer run the budget cut is undecided

  def _check_repository(self, after: str) -> None:
    """Stops the run if the repository's git settings (config, hooks, attributes) changed
    while agent-written code ran: the next git command could run what was planted."""
    if vcs.protected_config_digest(self.repo) != self.git_digest:
      raise RunHalted(f'the repository\'s git settings (.git/config, hooks or attributes) '
                      f'changed during {after}: stopping before any further git command; '
                      f'inspect {self.repo / ".git"} before resuming')

  # ---- data ---------------------------------------------------------------------------
  def _prepare_data(self, final: bool = False) -> None:
    """The run's trial inputs (training split, inputs to predict, never a label).

    On a run's first start the data is pinned: the start commit's `config.dataset`,
    resolved in the sandbox, and the fingerprints of its splits go into the journal. Every
    later trial gets exactly that data, whatever its config says, and a resumed run checks
    that it rebuilds the same. The test split's inputs are written only for the final
    evaluation.
    """
    if self.state.data is None:
      recorded = None
      try:
        dataset = dataset_config(self.worktree.path, self.config.experiment, self.charter.trial)
      except ValueError as e:
        raise BaselineError(str(e)) from None
      self._check_repository('resolving the experiment\'s dataset')
    else:
      dataset, recorded = self.state.data.dataset, self.state.data.fingerprints
    fingerprints = self._write_inputs(self.config.experiment, dataset, final)
    if recorded is None:
      self.state.data = records.DataPinned(dataset=dataset, fingerprints=fingerprints)
      self.journal.write(self.state.data)
    elif recorded != fingerprints:
      raise BaselineError(f'the data of this run changed since it started: fingerprints '
                          f'{fingerprints} vs recorded {recorded}')

  def _write_inputs(self, experiment: str, dataset: dict[str, Any], final: bool) -> dict:
    from harness.datasets import load_task  # the agent's own, trusted copy
    task = load_task(ml_collections.ConfigDict(dataset))
    inputs, targets = trial_inputs.build(task, dataset, with_test=final)
    folder = self.run_dir / 'inputs' / Path(experiment).stem / ('final' if final else 'search')
    trial_inputs.write(folder, inputs)
    self.data[experiment] = (folder, targets)
    return task.fingerprints()

  def _other_data(self, experiment: str, final: bool = False) -> None:
    """Another shipped experiment's data, pinned from the start commit like the run's own;
    `final`: with its test inputs, for the final evaluation, and the same data as pinned.
    One at a time: trials side by side may each want it first."""
    with self._pinning:
      self._pin_other(experiment, final)

  def _pin_other(self, experiment: str, final: bool) -> None:
    if experiment in self.data and not final:
      return
    start = vcs.create_detached(self.repo, self.run_dir / 'start', self.config.start_commit)
    dataset = dataset_config(start, experiment, self.charter.trial)
    fingerprints = self._write_inputs(experiment, dataset, final=final)
    pinned = [d for d in self.journal.read(records.DataPinned) if d.experiment == experiment]
    if final and pinned and pinned[-1].fingerprints != fingerprints:
      raise BaselineError(f'the data of {experiment} changed since the run pinned it: '
                          f'fingerprints {fingerprints} vs recorded {pinned[-1].fingerprints}')
    if not final:
      self.journal.write(records.DataPinned(dataset=dataset, fingerprints=fingerprints,
                                            experiment=experiment))

  # ---- budget -------------------------------------------------------------------------
  def elapsed(self) -> float:
    return self.state.elapsed_before + time.monotonic() - self.session_start

  def _measured_runs(self) -> tuple[float, float]:
    """Wall seconds of one run of the start commit (the baseline's) and of the incumbent
    (the baseline's where its own is unknown: a batch member's); 0s before the baseline."""
    baseline = self.journal.last(records.Baseline)
    if baseline is None:
      return 0.0, 0.0
    start = baseline.body.wall_seconds or baseline.body.arm.wall_seconds
    incumbent = self.state.incumbent.wall_seconds if self.state.incumbent else 0.0
    return start, incumbent or start

  def final_reserve(self) -> float:
    """Seconds kept out of the search for the final evaluation: its two runs, as measured,
    times FINAL_RESERVE_FACTOR; none when this session ends without one."""
    if not self.final_eval:
      return 0.0
    return FINAL_RESERVE_FACTOR * (sum(self._measured_runs()) + self.transfer.final_seconds)

  def search_left(self) -> float:
    """Seconds of the minute budget the search may still spend (the final evaluation's
    reserve kept out)."""
    return self.config.budget_minutes * 60 - self.elapsed() - self.final_reserve()

  def stop_reason(self, flying: int = 0) -> str | None:
    """Why no further trial may start, or None. `flying`: trials started and not yet decided
    (--workers); each holds its share of the trial budget and, as measured, of the compute."""
    c, s = self.config, self.state
    if s.trials_done + flying >= c.budget_trials:
      return f'trial budget spent ({s.trials_done}/{c.budget_trials})' + (
          f', {flying} more in flight' if flying else '')
    if self.search_left() < max(MIN_RUN_S, self._measured_runs()[1]):
      return (f'time budget spent ({self.elapsed() / 60:.1f}/{c.budget_minutes} min, '
              f'{self.final_reserve() / 60:.1f} min of it kept for the final evaluation; '
              'what is left would not finish a trial)')
    if c.budget_compute_seconds and (s.compute_seconds + flying * self._measured_runs()[1]
                                     >= c.budget_compute_seconds):
      return f'compute budget spent ({s.compute_seconds:.0f}/{c.budget_compute_seconds:.0f} s)'
    if c.budget_tokens and s.tokens >= c.budget_tokens:
      return f'token budget spent ({s.tokens}/{c.budget_tokens})'
    if s.awaiting_review is not None:
      return (f'trial {s.awaiting_review.trial} won and awaits review: python -m agent.main '
              f'review --run_id={c.run_id}')
    if s.since_accept >= self.charter.stop.patience:
      return (f'{s.since_accept} tries in a row (a batch trained together is one) without an '
              'accepted change')
    return None

  def _timeout(self) -> float:
    """The charter's per-trial cap, cut to the search's time left (never below MIN_RUN_S)."""
    return min(self.charter.trial.timeout_minutes * 60, max(MIN_RUN_S, self.search_left()))

  # ---- running --------------------------------------------------------------------------
  def _run(self, workdir: Path, first_seed: int, *, on_curve=None,
           worktree: Path | None = None, experiment: str | None = None,
           timeout_s: float | None = None, overrides: tuple[str, ...] = ()) -> TrialOutcome:
    if workdir.exists():  # an interrupted attempt: keep it beside, never overwrite it
      workdir.rename(workdir.with_name(f'{workdir.name}.interrupted-{int(time.time())}'))
    experiment = experiment or self.config.experiment
    inputs, targets = self.data[experiment]
    spec = TrialSpec(worktree=worktree or self.worktree.path, experiment=experiment,
                     workdir=workdir, seeds=self.config.seeds, first_seed=first_seed,
                     timeout_s=timeout_s or self._timeout(), limits=self.charter.trial,
                     inputs=inputs, compile_cache=self.run_dir.parent / COMPILE_CACHE,
                     overrides=overrides)
    scorer = scoring.Scorer(targets, self.config.seeds)
    outcome = self.execute(spec, scorer=scorer, on_curve=on_curve)
    self._check_repository(f'the trial in {workdir}')
    return outcome

  def _run_batch(self, workdir: Path, first_seed: int, values: list[dict[str, float]],
                 rule: rungs.Rule | None = None, *, worktree: Path) -> list[TrialOutcome]:
    """Members with these traced values, trained together on the `worktree`'s (the
    incumbent's) code; with a `rule`, ranked at its rungs and the trailing ones stopped."""
    inputs, targets = self.data[self.config.experiment]
    spec = TrialSpec(worktree=worktree, experiment=self.config.experiment,
                     workdir=workdir, seeds=self.config.seeds, first_seed=first_seed,
                     timeout_s=self._timeout(), limits=self.charter.trial, inputs=inputs,
                     compile_cache=self.run_dir.parent / COMPILE_CACHE, members=tuple(values),
                     rungs=rule.steps if rule else ())
    outcomes = self.execute_batch(spec, scorer=scoring.Scorer(targets, self.config.seeds),
                                  rule=rule)
    self._check_repository(f'the trial in {workdir}')
    return outcomes

  def run(self) -> str:
    """Runs until a stop rule fires; returns the reason."""
    self._prepare_data()
    if self.state.incumbent is None:
      self._baseline()
    try:
      self.transfer.prepare()
    except TransferError as e:
      raise BaselineError(str(e)) from None
    self.worktree.reset_to(self.state.incumbent.commit)
    self.direction = self._direction()
    if self.workers > 1:
      return self._run_parallel()
    while True:
      reason = self.stop_reason()
      if reason:
        return reason
      if self.state.pending is not None:  # interrupted trials resume one by one, alone
        resumed = self._resumed()
        if resumed is not None:
          self._trial(*resumed)
        continue
      if self.state.stale:  # a late win of a run that had trials side by side
        self._decide(self._restart_stale(self.worktree))
        continue
      trial = self.state.last_trial + 1
      observation = self._observe(trial)
      try:
        proposals = self._propose(observation)
      except NoProposal as e:
        return f'the proposer has nothing left to try ({e})'
      except ProposalFailed as e:
        self._record_failed_proposal(trial, str(e))
        continue
      values = [batching.traced_values(observation.experiment, observation.files, p.changes)
                for p in proposals]
      if len(proposals) > 1 and all(v is not None for v in values):
        self._batch(trial, proposals, values)
        continue
      self._write_proposal(trial, proposals[0])  # not a batch: the first alone
      self._trial(trial, proposals[0])

  def _resumed(self) -> tuple[int, Proposal] | None:
    """The next interrupted trial (its proposal recorded, no verdict), to run again; None
    when the incumbent it was for has since been replaced (recorded as refused): its
    proposal's files were written for that one."""
    pending = self.state.pending
    self.state.pending = self.state.later.pop(0) if self.state.later else None
    proposal = Proposal.from_record(pending.payload)
    self.pending_base = self.pending_base or self.state.incumbent.commit
    if self.state.incumbent.commit != self.state.bases.get(pending.trial, self.pending_base):
      self._record_guard_rejection(pending.trial, proposal, 'it was proposed for an incumbent '
                                   'that has since been replaced (an interrupted trial)')
      return None
    self.say(f'[trial {pending.trial}] resuming the interrupted trial: {proposal.hypothesis}')
    return pending.trial, proposal

  def _write_proposal(self, trial: int, proposal: Proposal) -> None:
    self.journal.write(proposal, trial=trial)
    self.state.last_trial = max(self.state.last_trial, trial)

  def _propose(self, observation: Observation, flying: int = 0) -> list[Proposal]:
    """One proposal, or a batch (a proposer's `propose_batch`) of at most the charter's
    `batch` and what the trial budget has left."""
    size = min(self.charter.trial.batch,
               self.config.budget_trials - self.state.trials_done - flying)
    propose_batch = getattr(self.proposer, 'propose_batch', None)
    if size > 1 and propose_batch is not None:
      return propose_batch(observation, size)[:size]
    return [self.proposer.propose(observation)]

  def record_usage(self, usage: Mapping[str, Any]) -> None:
    """The budget ledger: one record per LLM call, booked to the trial it was made for."""
    booked = records.LlmUsage.from_record(usage)
    self.journal.write(booked, trial=self.state.last_trial + 1)
    self.state.book(booked)

  def _baseline(self) -> None:
    self.say(f'[baseline] {self.config.experiment} at {self.config.start_commit[:10]} '
             f'on {self.config.seeds} seeds')
    outcome = self._run(self.run_dir / 'baseline', SCREEN_FIRST_SEED)
    if outcome.status != 'ok':
      self.journal.write(records.BaselineFailed(status=outcome.status, reason=outcome.reason))
      raise BaselineError(f'the baseline did not run: {outcome.status}: {outcome.reason} '
                          f'(log: {outcome.log_path})')
    arm = ArmRecord.from_scorecard(self.config.start_commit, outcome.log_path.parent,
                                   outcome.scorecard)
    self.journal.write(records.Baseline(arm=arm, wall_seconds=outcome.wall_seconds,
                                        sandbox=outcome.sandbox))
    self.state.compute_seconds += outcome.wall_seconds
    self.state.incumbent = arm
    self.say(f'[baseline] {self._metric_name()} {_fmt(arm.per_seed)}')

  def _scorecard(self, arm: ArmRecord) -> dict[str, Any]:
    return read_json(Path(arm.workdir) / SCORECARD)

  def _direction(self) -> str:
    card = self._scorecard(self.state.incumbent)
    return self.charter.objective.resolve_direction(card['metric']['direction'])

  def _metric_name(self) -> str:
    return self._scorecard(self.state.incumbent)['metric']['name']

  def _observe(self, trial: int, flying: list[_Started] = ()) -> Observation:
    root = self.worktree.path
    files = {self.config.experiment: (root / self.config.experiment).read_text()}
    for path in sorted((root / 'models').glob('*.py')):
      if path.is_file() and not path.is_symlink():  # never show the model an outside file
        files[str(path.relative_to(root))] = path.read_text()
    return Observation(charter=self.charter, experiment=self.config.experiment, files=files,
                       knobs=knobs.inventory(root / self.config.experiment),
                       scorecard=self._scorecard(self.state.incumbent),
                       direction=self.direction,
                       history=list(self.state.history) + [_in_flight(s) for s in flying],
                       trial=trial,
                       budget_left_seconds=min(
                           self.search_left(),
                           (self.config.budget_compute_seconds or float('inf'))
                           - self.state.compute_seconds))

  def _trial(self, trial: int, proposal: Proposal) -> None:
    """One trial alone, in the run's worktree: started, judged, concluded."""
    self._decide(self._start_trial(trial, proposal, self.worktree))

  def _decide(self, started: _Started | None) -> None:
    if started is not None:
      self._conclude(started, *self.judge.judge(started.trial, started.commit, started.diff,
                                                self.direction, self._metric_name()))

  def _start_trial(self, trial: int, proposal: Proposal, tree: vcs.Worktree) -> _Started | None:
    """The proposal guarded, its code import-checked and committed in `tree` (at the
    incumbent) and journaled as started; None when refused (recorded, `tree` reset)."""
    incumbent = self.state.incumbent
    self.say(f'[trial {trial}/{self.config.budget_trials}] incumbent '
             f'{self._metric_name()} {_fmt(incumbent.per_seed)} | {proposal.operator}: '
             f'{proposal.hypothesis}')
    diff = self._guarded(trial, proposal, tree)
    if diff is None:
      return None
    import_error = import_check(tree.path, sorted(proposal.changes),
                                timeout_s=min(120.0, self._timeout()), limits=self.charter.trial)
    self._check_repository(f'the import check of trial {trial}')
    if import_error:
      tree.reset_to(incumbent.commit)
      self._record_guard_rejection(trial, proposal, f'the edited code does not import: '
                                   f'{import_error}')
      return None
    commit = self._commit(trial, proposal, diff, tree)
    return _Started(trial, proposal, commit, diff)

  def _guarded(self, trial: int, proposal: Proposal, tree: vcs.Worktree) -> str | None:
    """The proposal's diff, its files written into `tree`; None (recorded as a guard
    rejection, nothing written) when the guard refuses it."""
    current = guard.read_current(tree.path, list(proposal.changes))
    checked = guard.check(self.charter, current, proposal.changes,
                          worktree=tree.path, keep=(self.config.experiment,))
    if not checked.ok:
      self._record_guard_rejection(trial, proposal, checked.reason)
      return None
    tree.write_files(dict(proposal.changes))
    return checked.diff

  def _commit(self, trial: int, proposal: Proposal, diff: str, tree: vcs.Worktree) -> str:
    """`tree` as the trial's pending commit, journaled as started on the incumbent."""
    commit = tree.commit(_commit_message(trial, proposal, 'pending'))
    self.journal.write(records.TrialStarted(commit=commit, diff=diff,
                                            incumbent=self.state.incumbent.commit),
                       trial=trial)
    return commit

  def _batch(self, first: int, proposals: list[Proposal], values: list[dict[str, float]]) -> None:
    """Candidates that change only traced values (agent.editing.batching): each is its own
    trial (proposal, commit, verdict), screened together in one process on the incumbent's
    code."""
    started = self._start_batch(first, proposals, values, self.worktree)
    if started:
      self._conclude_batch(started, self._judge_batch(self.judge, started, self.worktree))

  def _start_batch(self, first: int, proposals: list[Proposal], values: list[dict[str, float]],
                   tree: vcs.Worktree) -> list[_Started]:
    """A batch's proposals journaled, each guarded and committed on the incumbent in `tree`
    (reset to it after each)."""
    incumbent = self.state.incumbent
    trials = list(range(first, first + len(proposals)))
    for trial, proposal in zip(trials, proposals):
      self._write_proposal(trial, proposal)
    self.say(f'[trials {trials[0]}-{trials[-1]}/{self.config.budget_trials}] incumbent '
             f'{self._metric_name()} {_fmt(incumbent.per_seed)} | a batch of '
             f'{len(proposals)} trained together: '
             + '; '.join(f'{p.operator}: {p.hypothesis}' for p in proposals))
    started = []
    for trial, proposal, traced in zip(trials, proposals, values):
      diff = self._guarded(trial, proposal, tree)
      if diff is None:
        continue
      commit = self._commit(trial, proposal, diff, tree)
      tree.reset_to(incumbent.commit)
      started.append(_Started(trial, proposal, commit, diff, traced))
    return started

  def _judge_batch(self, judge: CandidateJudge, started: list[_Started], tree: vcs.Worktree
                   ) -> list[Judged]:
    return judge.judge_batch([s.trial for s in started], [s.commit for s in started],
                             [s.diff for s in started], [s.traced for s in started],
                             self.direction, self._metric_name(), checkout=tree.reset_to)

  def _conclude_batch(self, started: list[_Started], judged: list[Judged],
                      tree: vcs.Worktree | None = None, base: ArmRecord | None = None) -> None:
    """The winner, if any, is recorded last, so every other verdict was judged against the
    incumbent the journal names before it."""
    tree = tree or self.worktree
    order = sorted(range(len(started)), key=lambda i: judged[i][0].accepted)  # winner last
    for i in order:
      tree.reset_to(started[i].commit)
      self._conclude(started[i], *judged[i], batch=[s.trial for s in started], tree=tree,
                     base=base)

  def _conclude(self, started: _Started, verdict: decide_lib.Verdict,
                candidate: ArmRecord | None, extra: dict[str, Any],
                batch: list[int] | None = None, tree: vcs.Worktree | None = None,
                base: ArmRecord | None = None) -> None:
    """Records a judged candidate, `tree`'s HEAD (the run's worktree, or a parallel trial's
    slot): its commit message gets the verdict; a loser (or a winner awaiting review) is kept
    on its own ref and the run's worktree stays at (or goes back to) the incumbent; a winner
    moves the run's branch to it; the journal, the run state and the proposer learn the
    verdict. `base`: the incumbent the trial was judged against, if the run's has moved on
    since (a parallel trial's); a win against it is not kept but judged again (`stale`)."""
    trial, proposal, candidate_commit = started.trial, started.proposal, started.commit
    tree = tree or self.worktree
    incumbent = base or self.state.incumbent
    stale = verdict.accepted and incumbent.commit != self.state.incumbent.commit
    if stale:
      verdict = _stale(verdict, incumbent, self.state.incumbent)
    final_commit = tree.amend_message(
        _commit_message(trial, proposal, _verdict_text(verdict, candidate, incumbent)))
    record = records.Verdict.of(
        verdict, commit=final_commit, ran_commit=candidate_commit,
        candidate=dataclasses.replace(candidate, commit=final_commit) if candidate else None,
        **extra)
    review = verdict.accepted and self.config.review == 'required'
    if review:  # the winner waits on its own ref; the branch stays at the incumbent
      record = dataclasses.replace(record, accepted=False, awaiting_review=True)
      self.worktree.keep_ref(f'refs/agent/{self.config.run_id}/pending/{trial}', final_commit)
      tree.reset_to(incumbent.commit)
    elif not verdict.accepted:
      self.worktree.keep_ref(f'refs/agent/{self.config.run_id}/rejected/{trial}', final_commit)
      tree.reset_to(incumbent.commit)
    elif tree is not self.worktree:
      self.worktree.advance_branch(final_commit)
    self.state.count(self.journal.write(record, trial=trial), proposal,
                     batch if len(batch or []) > 1 else None)
    if not stale:  # a late win teaches the proposer nothing yet: its judging again will
      self.proposer.learn(proposal, verdict.accepted, verdict.gain)
    word = ('WON, awaiting review' if review else 'ACCEPTED' if verdict.accepted else
            'undecided (out of budget)' if verdict.reason_code == BUDGET else
            'won too late' if stale else 'rejected')
    self.say(f'[trial {trial}] {word}: {verdict.rationale}')

  def _record_failed_proposal(self, trial: int, reason: str) -> None:
    failed = self.journal.write(records.FailedProposal(rationale=reason), trial=trial)
    self.state.count(failed, None)
    self.say(f'[trial {trial}] the proposer produced no usable proposal: {reason}')

  def _record_guard_rejection(self, trial: int, proposal: Proposal, reason: str) -> None:
    rejected = self.journal.write(records.GuardRejected(rationale=reason), trial=trial)
    self.state.count(rejected, proposal)
    self.proposer.learn(proposal, False, None)
    self.say(f'[trial {trial}] rejected by the guard: {reason}')

  # ---- trials side by side (--workers) --------------------------------------------------
  def _run_parallel(self) -> str:
    """Up to `workers` tries (a batch is one) in flight at once, each in a slot worktree of
    its own at the incumbent it was proposed on and judged in a thread of its own, while this
    thread proposes the next; each is decided here as its result arrives, against that
    incumbent. The journal's verdicts, the run state and the run's branch change only here.
    An error (or Ctrl-C) leaves the trials in flight to die with the process, as a kill
    would: `resume` runs them again."""
    free = list(range(self.workers))
    cores = sorted(os.sched_getaffinity(0))
    per = max(1, len(cores) // self.workers)
    shares = [{cores[(slot * per + j) % len(cores)] for j in range(per)}
              for slot in range(self.workers)]
    flights: dict[futures.Future, _Flight] = {}
    while True:
      flying = [s for f in flights.values() for s in f.started]
      reason = self.stop_reason(len(flying))
      if reason is None and free:
        try:
          flight = self._take_off(free[0], flying)
        except NoProposal as e:
          reason = f'the proposer has nothing left to try ({e})'
        else:
          if flight is not None:
            flights[_in_thread(shares[flight.slot], self._fly, flight)] = flight
            free.remove(flight.slot)
          continue
      if not flights:
        return reason
      done, _ = futures.wait(flights, return_when=futures.FIRST_COMPLETED)
      for future in sorted(done, key=lambda f: flights[f].started[0].trial):
        flight = flights.pop(future)
        free.append(flight.slot)
        self._land(flight, future.result())

  def _take_off(self, slot: int, flying: list[_Started]) -> _Flight | None:
    """The next try, started in `slot` on the current incumbent: an interrupted trial, a
    late winner to judge again, or the proposer's next; None when it was refused (recorded)."""
    tree = vcs.detached_worktree(self.repo, self.run_dir / 'slots' / str(slot),
                                 self.state.incumbent.commit)
    tree.reset_to(self.state.incumbent.commit)
    base, batch = self.state.incumbent, False
    if self.state.pending is not None:
      resumed = self._resumed()
      started = [self._start_trial(*resumed, tree)] if resumed else []
    elif self.state.stale:
      started = [self._restart_stale(tree)]
    else:
      trial = self.state.last_trial + 1
      observation = self._observe(trial, flying)
      try:
        proposals = self._propose(observation, len(flying))
      except ProposalFailed as e:
        self._record_failed_proposal(trial, str(e))
        return None
      values = [batching.traced_values(observation.experiment, observation.files, p.changes)
                for p in proposals]
      batch = len(proposals) > 1 and all(v is not None for v in values)
      if batch:
        started = self._start_batch(trial, proposals, values, tree)
      else:
        self._write_proposal(trial, proposals[0])
        started = [self._start_trial(trial, proposals[0], tree)]
    started = [s for s in started if s is not None]
    if not started:
      return None
    # the run's noise as the trial starts: `verify` pools the verdicts journaled before it
    noise = pooled_noise.of_records(self.journal.records(), started[0].trial).variance
    judge = self.judge.bound(tree.path, base, noise, self.run_dir / 'slots' / f'{slot}-incumbent')
    return _Flight(slot, tree, base, started, judge, batch)

  def _fly(self, flight: _Flight) -> list[Judged]:
    """A flight's judging, in its thread: runs and their records (trial_finished,
    confirm_finished) as they end; no verdict, no run state but the compute booked."""
    if flight.batch:
      return self._judge_batch(flight.judge, flight.started, flight.tree)
    started = flight.started[0]
    return [flight.judge.judge(started.trial, started.commit, started.diff, self.direction,
                               self._metric_name())]

  def _land(self, flight: _Flight, judged: list[Judged]) -> None:
    """A flight's verdicts, recorded against the incumbent it was proposed on."""
    if flight.batch:
      self._conclude_batch(flight.started, judged, flight.tree, flight.base)
    else:
      flight.tree.reset_to(flight.started[0].commit)
      self._conclude(flight.started[0], *judged[0], tree=flight.tree, base=flight.base)

  def _restart_stale(self, tree: vcs.Worktree) -> _Started | None:
    """A win that came after the incumbent moved on, judged again from scratch as a new
    trial: its change 3-way merged onto the new incumbent (its proposal copied, with the
    merged files). Where the change does not apply there, that is recorded instead."""
    late, proposal, commit = self.state.stale.pop(0)
    trial = self.state.last_trial + 1
    merged = vcs.rebased_files(self.repo, self.state.incumbent.commit, commit)
    copy = Proposal.from_record({**proposal.to_record(), 'changes': merged or {},
                                 'rejudges': late})
    self._write_proposal(trial, copy)
    if merged is None:
      self._record_guard_rejection(trial, copy, f'trial {late} won against an incumbent that '
                                   f'has since been replaced, and its change does not apply '
                                   f'to the new one ({self.state.incumbent.commit[:10]})')
      return None
    self.say(f'[trial {trial}] judging trial {late}\'s change again, on the new incumbent')
    return self._start_trial(trial, copy, tree)

  # ---- end of run ----------------------------------------------------------------------
  def final_evaluation(self) -> records.FinalEval:
    """Start and final incumbent, once, on fresh seeds and on the test split. The search
    stopped early enough for it (`final_reserve`), and it is never cut by the budget."""
    final = self.state.incumbent
    start_tree = vcs.create_detached(self.repo, self.run_dir / 'start', self.config.start_commit)
    self.worktree.reset_to(final.commit)
    self._prepare_data(final=True)
    arms = {}
    # The minute budget bounds the search; the one test evaluation it ends with gets the
    # charter's full per-trial time, or a search that used its budget would end untested.
    timeout_s = self.charter.trial.timeout_minutes * 60
    for name, tree in (('baseline', start_tree), ('final', self.worktree.path)):
      self.say(f'[final] evaluating the {name} on fresh seeds and the test split')
      outcome = self._run(self.run_dir / 'final' / name, FINAL_FIRST_SEED, worktree=tree,
                          timeout_s=timeout_s)
      arms[name] = _final_arm(outcome)
    transfer = self.transfer.final(start_tree, self.worktree.path, FINAL_FIRST_SEED, timeout_s,
                                   _final_arm)
    results = records.FinalEval(**arms, commit={'baseline': self.config.start_commit,
                                                'final': final.commit},
                                transfer=transfer or None)
    self.journal.write(results)
    return results

  def end_session(self, reason: str) -> None:
    self.heartbeat.stop()
    self.journal.write(records.SessionEnded(
        reason=reason, elapsed_seconds=time.monotonic() - self.session_start))


Judged = tuple[decide_lib.Verdict, ArmRecord | None, dict[str, Any]]


@dataclasses.dataclass(frozen=True)
class _Started:
  """A trial whose candidate is committed and journaled as started."""
  trial: int
  proposal: Proposal
  commit: str
  diff: str
  traced: dict[str, float] | None = None  # a batch member's traced values


@dataclasses.dataclass(frozen=True)
class _Flight:
  """One slot's try in flight (--workers): its trials (a batch's, or one), the slot's
  worktree, the incumbent they were proposed on and the judge bound to both."""
  slot: int
  tree: vcs.Worktree
  base: ArmRecord
  started: list[_Started]
  judge: CandidateJudge
  batch: bool


def _in_thread(cores: set[int], work: Callable[..., Any], *args: Any) -> futures.Future:
  """`work(*args)` in a daemon thread pinned to `cores`, which every trial process it starts
  inherits (Linux keeps affinity per thread), so trials side by side do not fight over
  cores (XLA sizes its thread pool by them). A daemon: a run stopped by an error or Ctrl-C
  does not wait for its trials in flight (they die with the process, as on a kill, and
  `resume` runs them again)."""
  future: futures.Future = futures.Future()

  def target() -> None:
    try:
      os.sched_setaffinity(0, cores)
      future.set_result(work(*args))
    except BaseException as e:  # noqa: BLE001 - handed to the loop's thread, which raises it
      future.set_exception(e)
  threading.Thread(target=target, name='trial', daemon=True).start()
  return future


def _in_flight(started: _Started) -> TrialSummary:
  """A trial still running, as a proposer sees it beside the finished ones: what it tries,
  so the next proposal is not the same change."""
  p = started.proposal
  return TrialSummary(trial=started.trial, operator=p.operator, hypothesis=p.hypothesis,
                      accepted=False, reason_code='in_flight', gain=None, changes=p.changes,
                      rationale='still running, beside this proposal')


def _stale(verdict: decide_lib.Verdict, judged_on: ArmRecord,
           now: ArmRecord) -> decide_lib.Verdict:
  """A win against an incumbent that was replaced while the trial ran: not kept (it was not
  compared with the one it would replace), its numbers kept, and judged again on the new."""
  return dataclasses.replace(
      verdict, accepted=False, reason_code=records.STALE,
      rationale=f'Won against incumbent {judged_on.commit[:10]}, but while it ran the '
                f'incumbent became {now.commit[:10]}: not kept; its change is judged again '
                f'against {now.commit[:10]} as a new trial (if the budget allows). '
                f'{verdict.rationale}')


def default_workers(charter: Charter) -> int:
  """Trials in flight by default: the usable cores, one kept for the agent itself (it
  proposes, scores and commits while trials run), over the cores one trial asks for (charter
  [trial] cpus, at least one); never below 1. The shipped charter (cpus = 1) gives 1 on a
  2-core machine and 7 on an 8-core one."""
  cores = len(os.sched_getaffinity(0))
  return max(1, int((cores - 1) // max(1.0, charter.trial.cpus)))


def _final_arm(outcome: TrialOutcome) -> records.FinalArm:
  if outcome.status != 'ok' or outcome.scorecard is None:
    return records.FinalArm(status=outcome.status, reason=outcome.reason)
  test = read_json(outcome.log_path.parent / TEST_SCORECARD)
  return records.FinalArm(status='ok', val=outcome.scorecard['val_metric'],
                          test=test['test_metric'],
                          train_seconds=outcome.scorecard['train_seconds'],
                          seeds=outcome.scorecard['seeds'])


def _fmt(values: list[float]) -> str:
  finite = [v for v in values if v == v]
  mean = sum(finite) / len(finite) if finite else float('nan')
  return f'{mean:.4f} (seeds: {", ".join(f"{v:.4f}" for v in values)})'


def _commit_message(trial: int, proposal: Proposal, verdict: str) -> str:
  """The proposer's words on one line each, escape codes removed: `git log` shows them."""
  p = {k: one_line(getattr(proposal, k)) for k in
       ('operator', 'hypothesis', 'diagnosis', 'expected_effect')}
  return (f'trial {trial}: {p["operator"]}: {p["hypothesis"]}\n\n'
          f'Diagnosis: {p["diagnosis"]}\n'
          f'Hypothesis: {p["hypothesis"]}\n'
          f'Expected effect: {p["expected_effect"]}\n'
          f'Verdict: {one_line(verdict)}\n')


def _verdict_text(verdict: decide_lib.Verdict, candidate: ArmRecord | None,
                  incumbent: ArmRecord) -> str:
  evidence = (f'\nEvidence: incumbent {_fmt(incumbent.per_seed)}; candidate '
              f'{_fmt(candidate.per_seed)}' if candidate else '')
  word = ('ACCEPTED' if verdict.accepted else 'UNDECIDED' if verdict.reason_code == BUDGET
          else 'REJECTED')
  return f'{word} ({verdict.reason_code}). {verdict.rationale}{evidence}'

