"""Plain-words views of a run, read from its journal only: status, log, and the summary.

Every string the journal holds passes through `_text` first: a hypothesis or a reason
was written by a proposer or printed by a trial, and must neither steer the terminal
(escape codes, a carriage return over a line) nor start a line of its own.
"""

from __future__ import annotations

from typing import Any

from agent.recording.journal import Journal, Record
from agent.recording.state import RunState
from agent.untrusted import one_line


def _text(value: Any) -> str:
  """A journal string for a report line: printable and on one line."""
  return one_line('' if value is None else str(value))


def _mean(summary: dict[str, Any] | None) -> str:
  if not summary or summary.get('mean') is None:
    return 'n/a'
  return f"{summary['mean']:.4f} ± {summary['std']:.4f}"


def _arm_mean(arm: dict[str, Any] | None) -> str:
  if not arm:
    return 'n/a'
  values = [v for v in arm['per_seed'] if v == v]
  return f'{sum(values) / len(values):.4f}' if values else 'n/a'


TRIAL_ENDS = ('verdict', 'guard_rejected', 'proposal_failed')


def kept(journal: Journal) -> list[Record]:
  """Verdicts whose candidate became the incumbent: accepted, or approved in review."""
  approved = {r.trial for r in journal.records('review') if r.payload['approved']}
  return [r for r in journal.records('verdict')
          if r.payload.get('accepted') or r.trial in approved]


def status(journal: Journal) -> str:
  """Where the run stands: trials, incumbent, budget spent."""
  started = journal.records('run_started')[0].payload['config']
  ended = [r for r in journal.records() if r.kind in TRIAL_ENDS]
  accepted = kept(journal)
  baseline = journal.last('baseline')
  incumbent = accepted[-1].payload['candidate'] if accepted else (
      baseline.payload['arm'] if baseline else None)
  finished = journal.last('run_finished')
  waiting = RunState.replay(journal).awaiting_review
  state = ('finished: ' + _text(finished.payload['reason']) if finished else
           f"trial {waiting['trial']} awaits review" if waiting else 'not finished')
  lines = [f"run {_text(started['run_id'])}: {_text(started['experiment'])} with the "
           f"{_text(started['proposer'])} proposer, {_text(started['seeds'])} seeds per trial",
           f"trials: {len(ended)}/{started['budget_trials']} ({len(accepted)} accepted)",
           f"baseline {_arm_mean(baseline.payload['arm'] if baseline else None)}, "
           f"incumbent {_arm_mean(incumbent)} at "
           f"{_text(incumbent['commit'])[:10] if incumbent else '-'}",
           f"state: {state}"]
  usage = journal.records('llm_usage')
  if usage:
    tokens = sum(r.payload['input_tokens'] + r.payload['output_tokens'] for r in usage)
    cost = sum(r.payload.get('cost_usd') or 0.0 for r in usage)
    budget = started.get('budget_tokens') or 'unlimited'
    lines.append(f'LLM: {len(usage)} calls, {tokens} tokens (budget {budget}), '
                 f'${cost:.4f}')
  return '\n'.join(lines)


def log(journal: Journal) -> str:
  """One line per trial: what was tried, why, and what was decided."""
  proposals = {r.trial: r.payload for r in journal.records('proposal')}
  lines = []
  for record in journal.records():
    if record.kind == 'review':
      word = 'approved' if record.payload['approved'] else 'rejected'
      lines.append(f"    review: {word} by {_text(record.payload['reviewer'])}: "
                   f"{_text(record.payload['why'])}")
    if record.kind not in TRIAL_ENDS:
      continue
    p = proposals.get(record.trial, {})
    word = ('WON, awaiting review' if record.payload.get('awaiting_review') else
            'ACCEPTED' if record.payload.get('accepted') else 'rejected')
    lines.append(f"trial {record.trial} [{_text(p.get('operator', '?'))}] {word} "
                 f"({_text(record.payload.get('reason_code'))}): {_text(p.get('hypothesis'))}\n"
                 f"    {_text(record.payload.get('rationale'))}")
  return '\n'.join(lines) or 'no trials yet'


def summary(journal: Journal, branch: str, run_dir: str) -> str:
  """The end-of-run report: baseline vs final on validation and test, and the chain of wins."""
  lines = [status(journal), '']
  final = journal.last('final_eval')
  if final:
    p = final.payload
    lines.append('Evaluated once at the end, on fresh seeds never used in the search:')
    for name in ('baseline', 'final'):
      r = p[name]
      if r.get('status') == 'ok':
        lines.append(f"  {name:8s} {_text(p['commit'][name])[:10]}  val {_mean(r['val'])}   "
                     f"test {_mean(r['test'])}   seeds {r['seeds'][0]}..{r['seeds'][-1]}")
      else:
        lines.append(f"  {name:8s} did not run: {_text(r.get('status'))}: "
                     f"{_text(r.get('reason'))}")
  proposals = {r.trial: r.payload for r in journal.records('proposal')}
  chain = kept(journal)
  lines.append('')
  lines.append('Accepted changes, in order:' if chain else 'No change was accepted.')
  for r in chain:
    lines.append(f"  trial {r.trial} ({_text(r.payload['commit'])[:10]}): "
                 f"{_text(proposals.get(r.trial, {}).get('hypothesis'))}")
    lines.append(f"    {_text(r.payload['rationale'])}")
  lines += ['', f'Branch: {_text(branch)} (every rejected candidate under '
            'refs/agent/.../rejected/N)',
            f'Run directory: {_text(run_dir)}  (tensorboard --logdir {_text(run_dir)})']
  return '\n'.join(lines)
