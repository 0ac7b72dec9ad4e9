# the C module behind hashlib.md5, imported alone by vpopmail/passwords.py (APOP)
from hashlib import md5 as md5
