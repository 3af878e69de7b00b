"""Recording: the journal, the run's state replayed from it, git, audit, review, reports."""
