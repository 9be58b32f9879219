"""The one base of the failures `python -m training` reports as a message naming the problem (exit 2), not as a
traceback."""


class TrainingError(Exception):
    """Data, weights or an export the command cannot use as they are; the message says which and why."""
