"""The one error type for people: bad configs, missing files, corrupted runs.

The CLI prints its message as one sentence and exits with code 2, without a traceback.
"""


class FedpeftError(Exception):
    """A problem the user can fix: the message says what, where, and what to do."""
