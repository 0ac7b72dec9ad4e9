"""The per-user flag bits stored (in decimal) in vpasswd's gid field; values as vpopmail's.

Plain ints, not an enum: vchkpw and vdelivermail read them, and ``enum`` costs 5 ms to import.
"""
NO_PASSWD_CHNG = 0x01
NO_POP = 0x02
NO_WEBMAIL = 0x04
NO_IMAP = 0x08
BOUNCE_MAIL = 0x10
NO_RELAY = 0x20
NO_DIALUP = 0x40
V_USER0 = 0x80
V_USER1 = 0x100
V_USER2 = 0x200
V_USER3 = 0x400
NO_SMTP = 0x800
QA_ADMIN = 0x1000
V_OVERRIDE = 0x2000
NO_SPAMASSASSIN = 0x4000
DELETE_SPAM = 0x8000
SA_ADMIN = 0x10000
SA_EXPERT = 0x20000
NO_MAILDROP = 0x40000

#: vmoduser option letter -> bit
VMODUSER_LETTERS = {
    "d": NO_PASSWD_CHNG, "p": NO_POP, "w": NO_WEBMAIL, "i": NO_IMAP, "b": BOUNCE_MAIL,
    "r": NO_RELAY, "u": NO_DIALUP, "0": V_USER0, "1": V_USER1, "2": V_USER2, "3": V_USER3,
    "s": NO_SMTP, "a": QA_ADMIN, "o": V_OVERRIDE, "f": NO_SPAMASSASSIN, "F": DELETE_SPAM,
    "S": SA_ADMIN, "E": SA_EXPERT, "m": NO_MAILDROP,
}

#: (bit, text) in the order vuserinfo prints them under "limits:"
DESCRIPTIONS = (
    (NO_PASSWD_CHNG, "password can not be changed by user"),
    (NO_POP, "pop access closed"),
    (NO_WEBMAIL, "webmail access closed"),
    (NO_IMAP, "imap access closed"),
    (NO_SMTP, "smtp access is closed"),
    (NO_RELAY, "user not allowed to relay mail"),
    (NO_SPAMASSASSIN, "spamassassin processing disabled"),
    (DELETE_SPAM, "delete spam"),
    (NO_MAILDROP, "maildrop processing disabled"),
    (NO_DIALUP, "no dialup flag has been set"),
    (BOUNCE_MAIL, "mail will be bounced back to sender"),
    (QA_ADMIN, "has qmailadmin administrator access"),
    (SA_ADMIN, "has system administrator access"),
    (SA_EXPERT, "has expert access"),
    (V_USER0, "user flag 0 is set"),
    (V_USER1, "user flag 1 is set"),
    (V_USER2, "user flag 2 is set"),
    (V_USER3, "user flag 3 is set"),
    (V_OVERRIDE, "user is not subject to domain limits"),
)
