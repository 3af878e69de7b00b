"""Editing: the knob inventory and the typed edits that change config and model source."""
