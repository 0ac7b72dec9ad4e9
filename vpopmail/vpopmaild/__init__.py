"""vpopmaild: the network administration daemon, speaking vpopmail 5.4.33's protocol.

One process per connection under tcpserver (stdin/stdout are the socket). ``protocol`` reads
and writes lines, ``session`` logs in and dispatches, ``commands`` holds the user, domain, limit,
alias, IP-map and list commands, ``files`` the confined file commands, and ``daemon`` serves
one connection with the session and the command table.
"""
