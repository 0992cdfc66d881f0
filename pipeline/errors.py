"""The one base class for errors a user causes (bad parameters, bad files, bad URLs).

Stages turn these into one clear line on stderr and exit status 2; anything else is a bug
and keeps its traceback.
"""


class UserError(ValueError):
    """Raised with a message that names the file, URL or parameter and what is wrong."""
