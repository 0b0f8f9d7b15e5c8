-- Throttling of password guesses and of email changes (src/services/auth/Throttle.ts).
-- Keys are SHA-256 hex of a scope, an account (normalised email or user id)
-- and, per client, the client's address bucket: no email or address in the clear.
-- Every row expires; expired rows are deleted a few at a time as attempts come in.
CREATE TABLE attempt_counters (
  key TEXT PRIMARY KEY,
  attempts INTEGER NOT NULL,       -- attempts counted since the counter last expired
  blocked_until INTEGER NOT NULL,  -- epoch ms; attempts before then are refused (0: not blocked)
  expires_at INTEGER NOT NULL      -- epoch ms; the counter is forgotten after this
);
CREATE INDEX attempt_counters_expiry ON attempt_counters (expires_at);

-- Clients (address buckets) that signed in to an account successfully: the
-- per-account block does not apply to them, so an attacker cannot lock the
-- real user out from where it usually signs in.
CREATE TABLE known_clients (
  key TEXT PRIMARY KEY,
  expires_at INTEGER NOT NULL
);
CREATE INDEX known_clients_expiry ON known_clients (expires_at);
