-- Password credentials, by user id (users live in the users service).
CREATE TABLE credentials (
  user_id TEXT PRIMARY KEY,
  hash TEXT NOT NULL,          -- base64 PBKDF2-SHA256 output
  salt TEXT NOT NULL,          -- base64, 16 random bytes
  iterations INTEGER NOT NULL, -- kept per hash, so the work factor can rise over time
  updated_at TEXT NOT NULL
);

-- Refresh tokens, stored by SHA-256 of the token. Every login starts a family;
-- each refresh uses one token and issues the next in the same family. A used
-- or revoked token presented again revokes the whole family.
CREATE TABLE refresh_tokens (
  id TEXT PRIMARY KEY,
  family_id TEXT NOT NULL,
  user_id TEXT NOT NULL,
  created_at INTEGER NOT NULL,
  expires_at INTEGER NOT NULL,
  used_at INTEGER,
  revoked_at INTEGER
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);
