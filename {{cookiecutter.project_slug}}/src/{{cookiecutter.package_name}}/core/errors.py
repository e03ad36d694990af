"""Exceptions the CLI turns into one line instead of a traceback."""


class UserError(Exception):
    """Bad input (file, column, key, value). The message names it and says what was expected. Exit status 2."""


class Interrupted(Exception):
    """Ctrl-C during training, after the last checkpoint was written: the message says where (fold, epoch), and
    rerunning the same command resumes from there. Exit status 130, as for any program stopped by SIGINT."""
