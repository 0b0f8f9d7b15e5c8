-- Product import jobs: a job is queued as one message per product; the
-- consumer counts each message once, as imported, failed (a product that can
-- never be created: its SKU taken, its seller unknown) or dead (given up on
-- after the queue's retries, or undecodable).
CREATE TABLE import_jobs (
  id TEXT PRIMARY KEY,
  total INTEGER NOT NULL,
  imported INTEGER NOT NULL DEFAULT 0,
  failed INTEGER NOT NULL DEFAULT 0,
  dead INTEGER NOT NULL DEFAULT 0,
  created_by TEXT NOT NULL,
  created_at TEXT NOT NULL,
  updated_at TEXT NOT NULL
);

-- Why each failed or dead item of a job did not import.
CREATE TABLE import_failures (
  job_id TEXT NOT NULL,
  item INTEGER NOT NULL,
  outcome TEXT NOT NULL,
  reason TEXT NOT NULL,
  PRIMARY KEY (job_id, item)
);

-- Queue messages already handled, by the producer's message id (src/runtime/Queues.ts `once`).
CREATE TABLE queue_processed (
  id TEXT PRIMARY KEY,
  queue TEXT NOT NULL,
  outcome TEXT NOT NULL,
  processed_at TEXT NOT NULL
);

-- Dead-lettered messages that name no job (they did not decode), kept for inspection.
CREATE TABLE dead_letters (
  message_id TEXT PRIMARY KEY,
  queue TEXT NOT NULL,
  body TEXT NOT NULL,
  received_at TEXT NOT NULL
);
