"""The research agent, in layers (each imports only from those below; pyproject.toml's
import-linter contract checks it): main > start > loop > proposing > safety > recording >
judging > editing > charter, untrusted."""
