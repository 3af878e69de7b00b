"""The research loop: observe, propose, guard, edit, run, decide, record; then evaluate once.

All state lives in the run's journal and its git worktree; nothing else is trusted on
resume. `RunState.replay` rebuilds where the run stands from the journal alone, so a run
killed at any moment (even kill -9 inside a trial) continues without losing or
double-counting a trial, and the worktree is reset to the incumbent the journal names.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import ml_collections

from agent.candidate import BUDGET, SCREEN_FIRST_SEED, Budget, CandidateJudge
from agent.charter import Charter
from agent.editing import batching, knobs
from agent.judging import decide as decide_lib
from agent.judging import rungs
from agent.proposing.proposal import NoProposal, Observation, Proposal, ProposalFailed, Proposer
from agent.recording import records, vcs
from agent.recording.journal import Journal
from agent.recording.records import ArmRecord
from agent.recording.state import Heartbeat, RunState
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
               print_fn: Callable[[str], None] = lambda text: print(terminal_safe(text))):
    self.repo, self.run_dir, self.charter = repo, run_dir, charter
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
    self.git_digest = vcs.protected_config_digest(repo)
    self.judge = CandidateJudge(repo, run_dir, self.worktree.path, charter, state, journal,
                                self._run, self._run_batch, self._other_data,
                                lambda text: self.say(text),
                                Budget(self._timeout, self.search_left,
                                       lambda: self._measured_runs()[1]))
    self.transfer = TransferCheck(repo, run_dir, charter, state, journal, self._run,
                                  self._other_data, lambda text: self.say(text))
    self.judge.transfer = self.transfer

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
    `final`: with its test inputs, for the final evaluation, and the same data as pinned."""
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
    times FINAL_RESERVE_FACTOR."""
    return FINAL_RESERVE_FACTOR * (sum(self._measured_runs()) + self.transfer.final_seconds)

  def search_left(self) -> float:
    """Seconds of the minute budget the search may still spend (the final evaluation's
    reserve kept out)."""
    return self.config.budget_minutes * 60 - self.elapsed() - self.final_reserve()

  def stop_reason(self) -> str | None:
    c, s = self.config, self.state
    if s.trials_done >= c.budget_trials:
      return f'trial budget spent ({s.trials_done}/{c.budget_trials})'
    if self.search_left() < max(MIN_RUN_S, self._measured_runs()[1]):
      return (f'time budget spent ({self.elapsed() / 60:.1f}/{c.budget_minutes} min, '
              f'{self.final_reserve() / 60:.1f} min of it kept for the final evaluation; '
              'what is left would not finish a trial)')
    if c.budget_compute_seconds and s.compute_seconds >= c.budget_compute_seconds:
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
                 rule: rungs.Rule | None = None) -> list[TrialOutcome]:
    """Members with these traced values, trained together on the worktree's (the
    incumbent's) code; with a `rule`, ranked at its rungs and the trailing ones stopped."""
    inputs, targets = self.data[self.config.experiment]
    spec = TrialSpec(worktree=self.worktree.path, experiment=self.config.experiment,
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
    while True:
      reason = self.stop_reason()
      if reason:
        return reason
      trial = self.state.trials_done + 1
      pending = self.state.pending
      if pending is not None:  # an interrupted batch's candidates resume one by one, alone
        proposal = Proposal.from_record(pending.payload)
        self.state.pending = self.state.later.pop(0) if self.state.later else None
        self.pending_base = self.pending_base or self.state.incumbent.commit
        if self.state.incumbent.commit != self.pending_base:
          self._record_guard_rejection(trial, proposal, 'it was proposed for an incumbent '
                                       'that has since been replaced (an interrupted batch)')
          continue
        self.say(f'[trial {trial}] resuming the interrupted trial: {proposal.hypothesis}')
        self._trial(trial, proposal)
        continue
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
      self.journal.write(proposals[0], trial=trial)  # not a batch: the first alone
      self._trial(trial, proposals[0])

  def _propose(self, observation: Observation) -> list[Proposal]:
    """One proposal, or a batch (a proposer's `propose_batch`) of at most the charter's
    `batch` and what the trial budget has left."""
    size = min(self.charter.trial.batch, self.config.budget_trials - self.state.trials_done)
    propose_batch = getattr(self.proposer, 'propose_batch', None)
    if size > 1 and propose_batch is not None:
      return propose_batch(observation, size)[:size]
    return [self.proposer.propose(observation)]

  def record_usage(self, usage: Mapping[str, Any]) -> None:
    """The budget ledger: one record per LLM call, booked to the trial it was made for."""
    booked = records.LlmUsage.from_record(usage)
    self.journal.write(booked, trial=self.state.trials_done + 1)
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

  def _observe(self, trial: int) -> Observation:
    root = self.worktree.path
    files = {self.config.experiment: (root / self.config.experiment).read_text()}
    for path in sorted((root / 'models').glob('*.py')):
      if path.is_file() and not path.is_symlink():  # never show the model an outside file
        files[str(path.relative_to(root))] = path.read_text()
    return Observation(charter=self.charter, experiment=self.config.experiment, files=files,
                       knobs=knobs.inventory(root / self.config.experiment),
                       scorecard=self._scorecard(self.state.incumbent),
                       direction=self.direction, history=list(self.state.history), trial=trial,
                       budget_left_seconds=min(
                           self.search_left(),
                           (self.config.budget_compute_seconds or float('inf'))
                           - self.state.compute_seconds))

  def _trial(self, trial: int, proposal: Proposal) -> None:
    incumbent = self.state.incumbent
    self.say(f'[trial {trial}/{self.config.budget_trials}] incumbent '
             f'{self._metric_name()} {_fmt(incumbent.per_seed)} | {proposal.operator}: '
             f'{proposal.hypothesis}')
    diff = self._guarded(trial, proposal)
    if diff is None:
      return
    import_error = import_check(self.worktree.path, sorted(proposal.changes),
                                timeout_s=min(120.0, self._timeout()), limits=self.charter.trial)
    self._check_repository(f'the import check of trial {trial}')
    if import_error:
      self.worktree.reset_to(incumbent.commit)
      self._record_guard_rejection(trial, proposal, f'the edited code does not import: '
                                   f'{import_error}')
      return
    candidate_commit = self._commit(trial, proposal, diff)
    verdict, candidate, extra = self.judge.judge(trial, candidate_commit, diff,
                                                 self.direction, self._metric_name())
    self._conclude(trial, proposal, candidate_commit, verdict, candidate, extra)

  def _guarded(self, trial: int, proposal: Proposal) -> str | None:
    """The proposal's diff, its files written into the worktree; None (recorded as a guard
    rejection, nothing written) when the guard refuses it."""
    current = guard.read_current(self.worktree.path, list(proposal.changes))
    checked = guard.check(self.charter, current, proposal.changes,
                          worktree=self.worktree.path, keep=(self.config.experiment,))
    if not checked.ok:
      self._record_guard_rejection(trial, proposal, checked.reason)
      return None
    self.worktree.write_files(dict(proposal.changes))
    return checked.diff

  def _commit(self, trial: int, proposal: Proposal, diff: str) -> str:
    """The worktree as the trial's pending commit, journaled as started."""
    commit = self.worktree.commit(_commit_message(trial, proposal, 'pending'))
    self.journal.write(records.TrialStarted(commit=commit, diff=diff), trial=trial)
    return commit

  def _batch(self, first: int, proposals: list[Proposal], values: list[dict[str, float]]) -> None:
    """Candidates that change only traced values (agent.editing.batching): each is its own
    trial (proposal, commit, verdict), screened together in one process on the incumbent's
    code. The winner, if any, is recorded last, so every other verdict was judged against
    the incumbent the journal names before it."""
    incumbent = self.state.incumbent
    trials = list(range(first, first + len(proposals)))
    for trial, proposal in zip(trials, proposals):
      self.journal.write(proposal, trial=trial)
    self.say(f'[trials {trials[0]}-{trials[-1]}/{self.config.budget_trials}] incumbent '
             f'{self._metric_name()} {_fmt(incumbent.per_seed)} | a batch of '
             f'{len(proposals)} trained together: '
             + '; '.join(f'{p.operator}: {p.hypothesis}' for p in proposals))
    started = []
    for trial, proposal, traced in zip(trials, proposals, values):
      diff = self._guarded(trial, proposal)
      if diff is None:
        continue
      commit = self._commit(trial, proposal, diff)
      self.worktree.reset_to(incumbent.commit)
      started.append((trial, proposal, commit, diff, traced))
    if not started:
      return
    judged = self.judge.judge_batch([s[0] for s in started], [s[2] for s in started],
                                    [s[3] for s in started], [s[4] for s in started],
                                    self.direction, self._metric_name(),
                                    checkout=self.worktree.reset_to)
    order = sorted(range(len(started)), key=lambda i: judged[i][0].accepted)  # winner last
    for i in order:
      trial, proposal, commit, _, _ = started[i]
      self.worktree.reset_to(commit)
      self._conclude(trial, proposal, commit, *judged[i], batch=[s[0] for s in started])

  def _conclude(self, trial: int, proposal: Proposal, candidate_commit: str,
                verdict: decide_lib.Verdict, candidate: ArmRecord | None,
                extra: dict[str, Any], batch: list[int] | None = None) -> None:
    """Records a judged candidate, the worktree's HEAD: its commit message gets the verdict;
    a loser (or a winner awaiting review) is kept on its own ref and the worktree goes back
    to the incumbent; the journal, the run state and the proposer learn the verdict."""
    incumbent = self.state.incumbent
    final_commit = self.worktree.amend_message(
        _commit_message(trial, proposal, _verdict_text(verdict, candidate, incumbent)))
    record = records.Verdict.of(
        verdict, commit=final_commit, ran_commit=candidate_commit,
        candidate=dataclasses.replace(candidate, commit=final_commit) if candidate else None,
        **extra)
    review = verdict.accepted and self.config.review == 'required'
    if review:  # the winner waits on its own ref; the branch stays at the incumbent
      record = dataclasses.replace(record, accepted=False, awaiting_review=True)
      self.worktree.keep_ref(f'refs/agent/{self.config.run_id}/pending/{trial}', final_commit)
      self.worktree.reset_to(incumbent.commit)
    elif not verdict.accepted:
      self.worktree.keep_ref(f'refs/agent/{self.config.run_id}/rejected/{trial}', final_commit)
      self.worktree.reset_to(incumbent.commit)
    self.state.count(self.journal.write(record, trial=trial), proposal,
                     batch if len(batch or []) > 1 else None)
    self.proposer.learn(proposal, verdict.accepted, verdict.gain)
    word = ('WON, awaiting review' if review else 'ACCEPTED' if verdict.accepted else
            'undecided (out of budget)' if verdict.reason_code == BUDGET else 'rejected')
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

