"""One exception type for bad user input: the CLI prints its message on one line and exits 2."""


class UserError(Exception):
    """Bad input (file, column, key, value). The message names it and says what was expected."""
