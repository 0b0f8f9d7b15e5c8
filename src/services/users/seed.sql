-- Demo data for `npm start` (local only). Fixed ids, so re-running is a no-op.
INSERT OR IGNORE INTO users (id, email, name, role, active, created_at, updated_at) VALUES
  ('0195f3a0-0000-7000-8000-000000000001', 'ada@meshwork.dev', 'Ada Admin', 'admin', 1, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z'),
  ('0195f3a0-0000-7000-8000-000000000002', 'uma@meshwork.dev', 'Uma User', 'user', 1, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z'),
  ('0195f3a0-0000-7000-8000-000000000003', 'dora@meshwork.dev', 'Dora Disabled', 'user', 0, '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
