"""Safety: the guard, the code policy, the sandbox and the executor that runs a trial in it."""
