# libpass (imported as passlib): what vpopmail/passwords.py uses
