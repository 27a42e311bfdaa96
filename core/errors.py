"""Errors shared by every part of coinfer."""


class UsageError(Exception):
    """A mistake in what the user asked for (bad model path, split point out of range...).

    The command line prints it without a traceback and exits with status 2.
    """
