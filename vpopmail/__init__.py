"""pyvpopmail: vpopmail's virtual-domain mail library for qmail, in Python."""

__version__ = "0.1.0"
#: The C release whose behaviour and formats this follows.
VPOPMAIL_COMPAT = "5.4.33"
