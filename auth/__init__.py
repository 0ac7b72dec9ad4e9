"""Logins (vchkpw) and password hashing."""
