"""odepolicy: ODEtoODE and baseline policies trained by Riemannian evolution strategies."""

__version__ = "0.1.0"


class OdepolicyError(Exception):
    """An error caused by the user's input (config, file, id). The CLI prints it on one line
    and exits with status 2."""
