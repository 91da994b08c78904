"""The one base class for errors the command lines report to the user."""


class UserError(Exception):
    """An error caused by the user's input or config; the CLIs print it as one line and exit with status 2."""
