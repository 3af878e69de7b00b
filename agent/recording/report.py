"""Plain-words views of a run, read from its journal only: status, log, and the summary.

Every string the journal holds passes through `_text` first: a hypothesis or a reason
was written by a proposer or printed by a trial, and must neither steer the terminal
(escape codes, a carriage return over a line) nor start a line of its own.
"""

from __future__ import annotations

from typing import Any

from agent.recording import records
from agent.recording.journal import Journal, Record
from agent.recording.records import ArmRecord
from agent.recording.state import RunState
from agent.untrusted import one_line


def _text(value: Any) -> str:
  """A journal string for a report line: printable and on one line."""
  return one_line('' if value is None else str(value))


def _mean(summary: dict[str, Any] | None) -> str:
  if not summary or summary.get('mean') is None:
    return 'n/a'
  return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def _arm_mean(arm: ArmRecord | None) -> str:
  if not arm:
    return 'n/a'
  values = [v for v in arm.per_seed if v == v]
  return f'{sum(values) / len(values):.4f}' if values else 'n/a'


def kept(journal: Journal) -> list[Record]:
  """Verdicts whose candidate became the incumbent: accepted, or approved in review."""
  approved = {review.trial for review in journal.read(records.Review) if review.approved}
  return [r for r in journal.records(records.Verdict)
          if r.body.accepted or r.trial in approved]


def status(journal: Journal) -> str:
  """Where the run stands: trials, incumbent, budget spent."""
  started = journal.read(records.RunStarted)[0].config
  ended = [r for r in journal.records() if isinstance(r.body, records.TRIAL_ENDS)]
  accepted = kept(journal)
  baseline = journal.latest(records.Baseline)
  incumbent = accepted[-1].body.candidate if accepted else (baseline.arm if baseline else None)
  finished = journal.latest(records.RunFinished)
  waiting = RunState.replay(journal).awaiting_review
  state = ('finished: ' + _text(finished.reason) if finished else
           f"trial {waiting.trial} awaits review" if waiting else 'not finished')
  lines = [f"run {_text(started.run_id)}: {_text(started.experiment)} with the "
           f"{_text(started.proposer)} proposer, {_text(started.seeds)} seeds per trial",
           f"trials: {len(ended)}/{started.budget_trials} ({len(accepted)} accepted)",
           f"baseline {_arm_mean(baseline.arm if baseline else None)}, "
           f"incumbent {_arm_mean(incumbent)} at "
           f"{_text(incumbent.commit)[:10] if incumbent else '-'}",
           f"state: {state}"]
  usage = journal.read(records.LlmUsage)
  if usage:
    tokens = sum(u.input_tokens + u.output_tokens for u in usage)
    cost = sum(u.cost_usd or 0.0 for u in usage)
    budget = started.budget_tokens or 'unlimited'
    lines.append(f'LLM: {len(usage)} calls, {tokens} tokens (budget {budget}), '
                 f'${cost:.4f}')
  return '\n'.join(lines)


def transfer_table(final: records.FinalEval) -> list[str]:
  """Baseline vs final on each transfer experiment (charter [transfer]), test once each."""
  if not final.transfer:
    return []
  lines = ['', 'Transfer, evaluated once at the end on fresh seeds (test split touched once '
           'per dataset):']
  for experiment, result in final.transfer.items():
    arms = (result.baseline, result.final)
    if all(a.status == 'ok' for a in arms):
      change = result.final.test['mean'] - result.baseline.test['mean']
      lines.append(f"  {_text(experiment)}: {_text(result.metric) or 'metric'} test "
                   f"{_mean(result.baseline.test)} -> {_mean(result.final.test)} "
                   f"({change:+.4f}); val {_mean(result.baseline.val)} -> "
                   f"{_mean(result.final.val)}")
    else:
      lines.append(f"  {_text(experiment)}: did not run: " + '; '.join(
          f'{n} {_text(a.status)}: {_text(a.reason)}' for n, a in zip(('baseline', 'final'), arms)
          if a.status != 'ok'))
    if result.overrides:
      lines.append(f"    final carried {_text(' '.join(result.overrides))}")
  return lines


def _proposals(journal: Journal) -> dict[int, records.Proposed]:
  return {r.trial: r.body for r in journal.records(records.Proposed)}


def log(journal: Journal) -> str:
  """One line per trial: what was tried, why, and what was decided."""
  proposals = _proposals(journal)
  lines = []
  for record in journal.records():
    body = record.body
    if isinstance(body, records.Review):
      word = 'approved' if body.approved else 'rejected'
      lines.append(f"    review: {word} by {_text(body.reviewer)}: {_text(body.why)}")
    if not isinstance(body, records.TRIAL_ENDS):
      continue
    p = proposals.get(record.trial)
    word = ('WON, awaiting review' if getattr(body, 'awaiting_review', False) else
            'ACCEPTED' if body.accepted else 'rejected')
    lines.append(f"trial {record.trial} [{_text(p.operator if p else '?')}] {word} "
                 f"({_text(body.reason_code)}): {_text(p.hypothesis if p else None)}\n"
                 f"    {_text(body.rationale)}")
  return '\n'.join(lines) or 'no trials yet'


def summary(journal: Journal, branch: str, run_dir: str) -> str:
  """The end-of-run report: baseline vs final on validation and test, and the chain of wins."""
  lines = [status(journal), '']
  final = journal.latest(records.FinalEval)
  if final:
    lines.append('Evaluated once at the end, on fresh seeds never used in the search:')
    for name in ('baseline', 'final'):
      r: records.FinalArm = getattr(final, name)
      if r.status == 'ok':
        lines.append(f"  {name:8s} {_text(final.commit[name])[:10]}  val {_mean(r.val)}   "
                     f"test {_mean(r.test)}   seeds {r.seeds[0]}..{r.seeds[-1]}")
      else:
        lines.append(f"  {name:8s} did not run: {_text(r.status)}: {_text(r.reason)}")
    lines += transfer_table(final)
  proposals = _proposals(journal)
  chain = kept(journal)
  lines.append('')
  lines.append('Accepted changes, in order:' if chain else 'No change was accepted.')
  for r in chain:
    p = proposals.get(r.trial)
    lines.append(f"  trial {r.trial} ({_text(r.body.commit)[:10]}): "
                 f"{_text(p.hypothesis if p else None)}")
    lines.append(f"    {_text(r.body.rationale)}")
  lines += ['', f'Branch: {_text(branch)} (every rejected candidate under '
            'refs/agent/.../rejected/N)',
            f'Run directory: {_text(run_dir)}  (tensorboard --logdir {_text(run_dir)})']
  return '\n'.join(lines)
