import { applyD1Migrations } from "cloudflare:test"
import { env } from "cloudflare:workers"

// The mesh Workers share these databases with the runner (same D1 ids), so
// their migrations are applied here, once per test file; applying is idempotent.
await applyD1Migrations(env.USERS_DB, env.USERS_MIGRATIONS)
await applyD1Migrations(env.PRODUCTS_DB, env.PRODUCTS_MIGRATIONS)
await applyD1Migrations(env.AUTH_DB, env.AUTH_MIGRATIONS)
