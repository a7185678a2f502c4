"""The error types that map to the CLI's exit codes (0 ok, 2 bad input, 1 internal)."""


class UserError(Exception):
    """Bad input: the message names the file or value and the problem; exit code 2."""

    exit_code = 2


class ValidationFailed(Exception):
    """A candidate model scored worse than allowed; exit code 3."""

    exit_code = 3
