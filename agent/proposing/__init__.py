"""Proposing: what a proposer sees and answers, the heuristic, the bandit and the LLM."""
