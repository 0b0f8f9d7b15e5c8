-- Demo data for `npm start` (local only). Fixed ids, so re-running is a no-op.
INSERT OR IGNORE INTO products (id, sku, name, description, price_cents, currency, stock, seller_id, created_at, updated_at) VALUES
  ('0195f3a0-0000-7000-8000-000000000101', 'MESH-001', 'Mesh Router', 'A router for meshes.', 12900, 'USD', 12, '0195f3a0-0000-7000-8000-000000000001', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z'),
  ('0195f3a0-0000-7000-8000-000000000102', 'MESH-002', 'Edge Cache', 'Stale while you revalidate.', 4900, 'USD', 40, '0195f3a0-0000-7000-8000-000000000001', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z'),
  ('0195f3a0-0000-7000-8000-000000000103', 'MESH-003', 'Circuit Breaker', 'Opens before you do.', 2900, 'USD', 0, '0195f3a0-0000-7000-8000-000000000001', '2026-01-01T00:00:00.000Z', '2026-01-01T00:00:00.000Z');
