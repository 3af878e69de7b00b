"""The run's pooled seed noise (agent.judging.noise) replayed from its journal: the loop and
`verify` both build it here, so a resumed run and its audit agree."""

from __future__ import annotations

from collections.abc import Iterable

from agent.judging.noise import RunNoise
from agent.recording import records as records_lib
from agent.recording.journal import Record


def of_records(records: Iterable[Record], before_trial: int) -> RunNoise:
  """The comparisons of every verdict for a trial numbered below `before_trial` (a batch's
  members are all judged before any of their verdicts is written, so a batch counts from its
  first trial), each against the incumbent of its time, as the journal replays it."""
  noise, incumbent = RunNoise(), None
  waiting: dict[int, records_lib.Verdict] = {}
  arms: dict[str, records_lib.ArmRecord] = {}  # every incumbent so far, by commit
  judged_on: dict[int, str] = {}  # trial -> the incumbent it ran against (--workers)
  for record in records:
    body = record.body
    if isinstance(body, records_lib.Baseline):
      incumbent = arms[body.arm.commit] = body.arm
    elif isinstance(body, records_lib.TrialStarted) and body.incumbent:
      judged_on[record.trial] = body.incumbent
    elif isinstance(body, records_lib.Verdict):
      against = arms.get(judged_on.get(record.trial, ''), incumbent)
      if record.trial < before_trial and against is not None and body.candidate is not None \
          and body.candidate.fingerprints == against.fingerprints:
        looks = [(against.per_seed, body.candidate.per_seed)]
        looks += [(arms['incumbent'].per_seed, arms['candidate'].per_seed)
                  for arms in body.looks or []]
        noise = noise.seen(looks)
      if body.awaiting_review:
        waiting[record.trial] = body
      elif body.accepted:
        incumbent = arms[body.candidate.commit] = body.candidate
    elif isinstance(body, records_lib.Review):
      verdict = waiting.pop(body.trial, None)
      if verdict is not None and body.approved:
        incumbent = arms[verdict.candidate.commit] = verdict.candidate
  return noise
