"""The error base the CLI reports as one clear line (exit status 2) instead of a traceback."""


class PPSSLError(Exception):
    """A failure caused by the user's input or environment, with a message that says what to fix."""


class SettingError(PPSSLError, ValueError):
    """A setting outside what it can be (a negative input size, an unknown view): a ValueError to library callers,
    one line on the command line."""
