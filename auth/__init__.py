"""User databases (backends) and password hashing."""
