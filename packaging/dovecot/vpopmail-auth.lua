-- Dovecot 2.4 passdb and userdb for pyvpopmail's users, through vpopmail-server.
--
-- Dovecot 2.4 removed the checkpassword driver vchkpw served. This script (Dovecot's Lua
-- auth, Debian's dovecot-auth-lua) asks vpopmail-server instead, over HTTP on its Unix
-- socket: the server runs vchkpw as the checkpassword driver ran it, so a login does what a
-- vchkpw login does (flags and domain limits, lastauth, the roaming-user relay, learned and
-- rehashed passwords), with either user backend (cdb files or SQL). Set
-- server.dovecot_callers in vpopmail.toml to the user Dovecot's auth-worker runs as (root
-- unless "service auth-worker { user = ... }" says otherwise), and SOCKET below to the
-- server's lookup socket (paths.lookup_socket: made only for those callers, and only they
-- may connect where root is the one listed). See dovecot24-vpopmail-server.conf.
--
-- Answers: 200 with name=value lines (values percent-encoded); 403 refused (wrong password,
-- unknown user, service denied); 404 no such user (a userdb lookup); anything else, or no
-- answer, is a temporary failure (Dovecot says so to the client: never "wrong password").

local SOCKET = "/home/vpopmail/run/lookup.sock"

-- How long a lookup may take: more than mysql.read_timeout (30 s by default; a login whose
-- lastauth row waits that long goes on without it), less than Dovecot's own 60 s auth-worker
-- lookup timeout. Raise it with a longer mysql.read_timeout (up to 55s).
local TIMEOUT = "45s"

local client

function script_init()
  client = dovecot.http.client({
    proxy_socket_path = SOCKET,
    request_timeout = TIMEOUT,
    request_max_attempts = 1,
  })
  return 0
end

local function encode(s)
  return (s:gsub("[^%w%-%._~]", function(c) return string.format("%%%02X", c:byte()) end))
end

local function decode(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- POST one lookup; (HTTP status, fields of a 200, reason)
local function ask(kind, req, password)
  local body = "user=" .. encode(req.user)
    .. "&service=" .. encode(req:var_expand("%{protocol}"))
    .. "&rip=" .. encode(req:var_expand("%{remote_ip}"))
    .. "&lip=" .. encode(req:var_expand("%{local_ip}"))
  if password ~= nil then
    body = body .. "&password=" .. encode(password)
  end
  local request = client:request({ url = "http://vpopmail-server/" .. kind, method = "POST" })
  request:add_header("Content-Type", "application/x-www-form-urlencoded")
  request:set_payload(body)
  local response = request:submit()
  local fields = {}
  if response:status() == 200 then
    for name, value in response:payload():gmatch("([%w_]+)=([^\n]*)\n") do
      fields[name] = decode(value)
    end
  end
  return response:status(), fields, response:reason()
end

function auth_password_verify(req, password)
  local status, fields, reason = ask("passdb", req, password)
  if status == 200 then
    return dovecot.auth.PASSDB_RESULT_OK, fields
  elseif status == 403 then
    return dovecot.auth.PASSDB_RESULT_PASSWORD_MISMATCH, "refused by vchkpw"
  end
  return dovecot.auth.PASSDB_RESULT_INTERNAL_FAILURE,
    "vpopmail-server: " .. status .. " " .. (reason or "")
end

function auth_userdb_lookup(req)
  local status, fields, reason = ask("userdb", req, nil)
  if status == 200 then
    return dovecot.auth.USERDB_RESULT_OK, fields
  elseif status == 404 or status == 403 then
    return dovecot.auth.USERDB_RESULT_USER_UNKNOWN, "no such user"
  end
  return dovecot.auth.USERDB_RESULT_INTERNAL_FAILURE,
    "vpopmail-server: " .. status .. " " .. (reason or "")
end
