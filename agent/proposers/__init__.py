"""Proposers: the heuristic (offline, rule- and bandit-driven) one lives here."""

from agent.proposers.bandit import Bandit
from agent.proposers.heuristic import HeuristicProposer

__all__ = ['Bandit', 'HeuristicProposer']
