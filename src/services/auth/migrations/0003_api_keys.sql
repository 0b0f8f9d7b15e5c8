-- API keys for machine clients (src/services/auth/ApiKeys.ts). A key is shown
-- once, when issued; only its SHA-256 (hex) is kept, with its first 12
-- characters to recognise it by. Revoked and expired keys are purged 30 days on.
CREATE TABLE api_keys (
  id TEXT PRIMARY KEY,          -- UUIDv7: lists page by it, in creation order
  hash TEXT NOT NULL UNIQUE,    -- hex SHA-256 of the key
  prefix TEXT NOT NULL,         -- "mwk_" and the key's next 8 characters
  name TEXT NOT NULL,
  user_id TEXT NOT NULL,        -- the user the key acts as
  roles TEXT NOT NULL,          -- JSON array, at most the user's roles
  plan TEXT NOT NULL,           -- a name in API_KEY_PLANS
  per_minute INTEGER,           -- the key's own quota, or NULL for the plan's
  per_day INTEGER,
  created_at INTEGER NOT NULL,  -- epoch ms
  expires_at INTEGER,           -- epoch ms, or NULL: never
  revoked_at INTEGER            -- epoch ms, or NULL
);
CREATE INDEX api_keys_user ON api_keys (user_id, id);
