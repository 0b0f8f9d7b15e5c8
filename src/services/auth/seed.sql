-- Demo credentials for `npm start` (local only), PBKDF2-SHA256 at 100,000 iterations:
--   ada@meshwork.dev  / ada-local-password   (admin)
--   uma@meshwork.dev  / uma-local-password   (user)
--   dora@meshwork.dev / dora-local-password  (disabled: login is refused)
INSERT OR IGNORE INTO credentials (user_id, hash, salt, iterations, updated_at) VALUES
  ('0195f3a0-0000-7000-8000-000000000001', 'Dca2nOyOGmeT15dlFfZqRks3TzletQW9d1/Vewg17JM=', 'AcIcVBsnqvowSnlNes2dEg==', 100000, '2026-01-01T00:00:00.000Z'),
  ('0195f3a0-0000-7000-8000-000000000002', '32u6/e9h60XXihmuRkQg8Acv+mn1Nv1YlW3hnosoP88=', 'OGZkBeZkImWjFlsZhhL5ow==', 100000, '2026-01-01T00:00:00.000Z'),
  ('0195f3a0-0000-7000-8000-000000000003', 'sCdNri8ygkKmFufQHh+ZEKetahYeFCPsnT7vjdHtZGs=', 'emT+OahFGAg9X3nsaKkBAg==', 100000, '2026-01-01T00:00:00.000Z');
