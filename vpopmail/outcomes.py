"""The exit codes of the programs qmail and the mail servers run, each named once, and the fixed
texts (C vpopmail 5.4's) that go with them.

vdelivermail answers qmail-local, which reads only its exit code and what it printed on stdout
(qmail-send logs the text, or puts it in the bounce). vchkpw answers a POP3/IMAP server or an
SMTP AUTH with the checkpassword convention; after a good login it execs the next program, whose
exit code is the server's answer. Hot-path safe: imports nothing.
"""

# vdelivermail -> qmail-local ------------------------------------------------------------------
DELIVERED = 0
#: delivered, and qmail-local reads no further instructions of the .qmail file (a program's 99)
STOP = 99
#: a permanent failure: qmail-send bounces the message with the text printed
BOUNCE = 100
#: a temporary failure, and every local fault: qmail-send tries again later
DEFER = 111

NO_MAILBOX = "Sorry, no mailbox here by that name. (#5.1.1)"  # BOUNCE (or .no-user.msg)
LOOPING = "mail is looping"  # BOUNCE
OVER_QUOTA = "user is over quota"  # BOUNCE (or .over-quota.msg)
BAD_SYNTAX = "vdelivermail: invalid syntax in .qmail-default file"  # DEFER
SYSTEM_ERROR = "system error"  # DEFER: the Maildir write failed
INJECT_FAILED = "system error calling qmail-inject"  # DEFER, or qmail-inject's own exit code
VALIASES_DONE = "vdelivermail: valiases processed"  # DELIVERED
DATABASE_DOWN = "vdelivermail: deferred, database down"  # DEFER

# vchkpw -> the POP3/IMAP server or SMTP AUTH -------------------------------------------------
REJECTED = 1
MISUSE = 2
#: Dovecot's "unknown user", for its userdb lookups (AUTHORIZED=1) only
DOVECOT_NO_USER = 3
#: a temporary failure, and every local fault (C vpopmail answered 3, "wrong password")
TEMPORARY = 111
