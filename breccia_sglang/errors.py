"""The one exception type users see from breccia-sglang's checkpoint handling."""


class BrecciaCheckpointError(ValueError):
    """A breccia checkpoint cannot be served as it is.

    The message always names the file and/or tensor at fault, so it can be shown to the
    user as one line without a traceback.
    """
