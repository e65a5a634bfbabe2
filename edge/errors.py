"""The one base class of every error leukedge reports to a user as a single line (no traceback)."""


class LeukedgeError(Exception):
    """A problem with the user's input (file, model, data, option), stated with what and where."""
