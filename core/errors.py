"""Errors shared by every part of coinfer."""


class UsageError(ValueError):
    """A value given by the caller is wrong (a bad model path, a split point out of range, an unknown
    codec, a malformed system file...).

    Library code raises it wherever the mistake is the caller's, not coinfer's; it is a ValueError, so
    a library caller may catch ValueError. The command line prints it without a traceback and exits
    with status 2.
    """
