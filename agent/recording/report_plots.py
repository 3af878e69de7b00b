"""The HTML report's figures, drawn with matplotlib as inline SVG: the page needs no network,
no script and no font to show them (text is drawn as paths).

Only numbers and the report's own labels reach a figure, never a proposer's words; the
page escapes those where it prints them.
"""

from __future__ import annotations

import dataclasses
import io
import math
import re

import matplotlib
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

ACCEPTED, REJECTED, BASELINE, BAND = '#1a7f37', '#cf222e', '#0969da', '#0969da'
_PROLOGUE = re.compile(r'^.*?(?=<svg)', re.S)  # the XML declaration and DOCTYPE


@dataclasses.dataclass(frozen=True)
class Step:
  """The incumbent after one trial: where best-so-far stands, and that trial's candidate."""
  trial: int
  compute_seconds: float  # trial compute spent so far, baseline included
  best: float  # the incumbent's mean over its seeds
  best_std: float  # its seed-to-seed standard deviation (the band)
  candidate: float | None  # the trial's candidate mean, None when nothing ran
  kept: bool


@dataclasses.dataclass(frozen=True)
class Gains:
  """One trial's paired per-seed gains, oriented so that positive is better."""
  trial: int
  screen: list[float]
  confirm: list[float]  # on fresh seeds, for a screen winner
  noise_floor: float
  kept: bool


@dataclasses.dataclass(frozen=True)
class Point:
  """One arm on the trade-off plots."""
  label: str  # 'baseline' or the trial number
  metric: float
  latency_ms: float
  memory_mb: float
  kept: bool


def _svg(fig: Figure, name: str) -> str:
  """The figure as an `<svg>` element to inline; ids salted by name so that two figures on
  one page never share a clip path id."""
  buffer = io.StringIO()
  with matplotlib.rc_context({'svg.hashsalt': name, 'svg.fonttype': 'path'}):
    fig.savefig(buffer, format='svg', bbox_inches='tight', metadata={'Date': None})
  return _PROLOGUE.sub('', buffer.getvalue(), count=1)


def _figure(width: float = 7.0, height: float = 3.4) -> Figure:
  return Figure(figsize=(width, height), dpi=100, layout='constrained')


def best_so_far(steps: list[Step], metric: str, direction: str) -> str:
  """Best-so-far against trials and against compute seconds, with the incumbent's seed band
  and every candidate's mean; `steps[0]` is the baseline (trial 0)."""
  fig = _figure(9.0, 3.4)
  axes = fig.subplots(1, 2, sharey=True)
  for ax, key, label in ((axes[0], 'trial', 'trial'),
                         (axes[1], 'compute_seconds', 'trial compute seconds')):
    xs = [float(getattr(s, key)) for s in steps]
    best, std = [s.best for s in steps], [s.best_std for s in steps]
    ax.fill_between(xs, [b - s for b, s in zip(best, std)], [b + s for b, s in zip(best, std)],
                    step='post', color=BAND, alpha=0.15, linewidth=0,
                    label='incumbent ± 1 seed std')
    ax.step(xs, best, where='post', color=BAND, linewidth=2, label='best so far')
    for kept, colour, name in ((True, ACCEPTED, 'kept'), (False, REJECTED, 'rejected')):
      points = [(float(getattr(s, key)), s.candidate) for s in steps
                if s.candidate is not None and math.isfinite(s.candidate) and s.kept == kept]
      if points:
        ax.scatter(*zip(*points), color=colour, s=22, zorder=3, label=f'candidate ({name})')
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
  axes[0].xaxis.set_major_locator(MaxNLocator(integer=True))
  axes[0].set_ylabel(f'validation {metric} ({"higher" if direction == "max" else "lower"} '
                     'is better)')
  axes[0].legend(fontsize=7, loc='best')
  return _svg(fig, 'best')


def paired_gains(gains: list[Gains], metric: str) -> str:
  """Each trial's per-seed gains over the incumbent, beside the noise floor it had to beat."""
  fig = _figure()
  ax = fig.subplots()
  ax.axhline(0.0, color='#57606a', linewidth=1)
  for g in gains:
    colour = ACCEPTED if g.kept else REJECTED
    ax.scatter([g.trial - 0.08] * len(g.screen), g.screen, color=colour, s=18, zorder=3)
    if g.confirm:
      ax.scatter([g.trial + 0.08] * len(g.confirm), g.confirm, color=colour, s=22,
                 marker='D', facecolors='none', zorder=3)
    if math.isfinite(g.noise_floor):
      ax.hlines(g.noise_floor, g.trial - 0.35, g.trial + 0.35, color='#57606a',
                linestyles='dashed')
  handles = [ax.scatter([], [], color=ACCEPTED, s=18, label='seed pair (kept)'),
             ax.scatter([], [], color=REJECTED, s=18, label='seed pair (rejected)'),
             ax.scatter([], [], color='#57606a', marker='D', facecolors='none', s=22,
                        label='fresh-seed pair (confirmation)'),
             ax.hlines([], 0, 0, color='#57606a', linestyles='dashed', label='noise floor')]
  ax.legend(handles=handles, fontsize=7, loc='best')
  ax.set_xlabel('trial')
  ax.set_ylabel(f'paired gain in {metric}')
  if gains:
    ax.set_xticks([g.trial for g in gains])
  ax.grid(alpha=0.3)
  return _svg(fig, 'gains')


def _frontier(points: list[tuple[float, float]], direction: str) -> list[tuple[float, float]]:
  """The points no other point beats on both cost (lower) and metric."""
  better = (lambda a, b: a > b) if direction == 'max' else (lambda a, b: a < b)
  front, best = [], None
  for cost, value in sorted(points, key=lambda p: (p[0], -p[1] if direction == 'max' else p[1])):
    if best is None or better(value, best):
      front.append((cost, value))
      best = value
  return front


def tradeoffs(points: list[Point], metric: str, direction: str,
              limits: dict[str, list[tuple[float, str]]]) -> str:
  """The metric against step latency and against peak memory, with the frontier and the
  charter's limits (`limits`: 'latency' / 'memory' -> [(value, label)])."""
  fig = _figure(9.0, 3.4)
  axes = fig.subplots(1, 2, sharey=True)
  for ax, key, label in ((axes[0], 'latency', 'step latency p50 (ms)'),
                         (axes[1], 'memory', 'peak memory (MB)')):
    cost = (lambda p: p.latency_ms) if key == 'latency' else (lambda p: p.memory_mb)
    shown = [p for p in points if math.isfinite(p.metric) and cost(p) > 0]
    for p in shown:
      colour = BASELINE if p.label == 'baseline' else ACCEPTED if p.kept else REJECTED
      ax.scatter([cost(p)], [p.metric], color=colour, s=24, zorder=3)
      ax.annotate(p.label, (cost(p), p.metric), fontsize=7, xytext=(3, 3),
                  textcoords='offset points')
    front = _frontier([(cost(p), p.metric) for p in shown], direction)
    if front:
      ax.step(*zip(*front), where='post', color='#57606a', linewidth=1, label='frontier')
    for value, name in limits.get(key, []):
      ax.axvline(value, color=REJECTED, linestyle='dotted', linewidth=1.5, label=name)
    xs = [cost(p) for p in shown] + [v for v, _ in limits.get(key, [])]
    if xs and min(xs) > 0 and max(xs) / min(xs) > 20:
      ax.set_xscale('log')
      ax.xaxis.set_minor_formatter(NullFormatter())  # labelled minor ticks overlap
    ax.set_xlabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc='best')
  axes[0].set_ylabel(f'validation {metric}')
  return _svg(fig, 'tradeoffs')
