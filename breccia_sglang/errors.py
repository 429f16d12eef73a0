"""The one exception type users see from breccia-sglang's checkpoint handling."""


class BrecciaCheckpointError(ValueError):
    """A breccia checkpoint cannot be served as it is.

    The message always names the file and/or tensor at fault, so it can be shown to the
    user as one line without a traceback.
    """


class BrecciaConfigError(ValueError):
    """A breccia-sglang setting (a flag, an environment variable, a tuned-config file) is invalid.

    The message names the setting or file at fault.
    """
