"""Maildir and Maildir++: directory layout, quotas (``maildirsize``) and, later, delivery."""
