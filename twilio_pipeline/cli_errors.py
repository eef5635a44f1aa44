"""The exit codes of docs/reference.md "Exit codes" and the one-line error the CLI prints for bad input."""

EXIT_OK, EXIT_FAILED, EXIT_INPUT, EXIT_BUSY = 0, 1, 2, 3


class CliError(Exception):
    """Bad input or an unusable environment: printed as one line, no traceback."""

    def __init__(self, message: str, code: int = EXIT_INPUT):
        super().__init__(message)
        self.code = code
