"""Errors a user can cause. The CLI prints them as one line and exits 2, without a traceback."""


class RecipeError(Exception):
    """A problem with the user's input (data, flags, pipeline) rather than a bug in the recipe."""


class DataError(RecipeError):
    """The data could not be found or read: missing files, corrupt IDX/CSV, mismatched counts."""
