"""vdelivermail: the delivery agent qmail-local runs for every message to a virtual domain."""
