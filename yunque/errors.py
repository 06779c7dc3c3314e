"""The one exception type that means "the user gave us something wrong".

Library code raises `YunqueError` with a single sentence that says what is wrong and
what to do; the CLI prints that sentence and exits non-zero, and the server turns it
into a 4xx answer. Anything else that escapes is a bug and keeps its traceback.
"""


class YunqueError(Exception):
    """A user-facing error: bad input, a missing file, an inconsistent setting."""
