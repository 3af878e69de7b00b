"""Judging: the acceptance rule and which files a trial ran (where a change is judged)."""
