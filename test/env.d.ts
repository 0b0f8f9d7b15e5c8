import type { D1Migration } from "cloudflare:test"

declare global {
  namespace Cloudflare {
    interface Env {
      readonly GATEWAY: Fetcher
      readonly ECHO: Fetcher
      /** The hello example (examples/hello). */
      readonly HELLO: Fetcher
      readonly FLAKY: Fetcher
      readonly AUTH: Fetcher
      readonly ROUTER: Fetcher
      readonly USERS: Fetcher
      readonly PRODUCTS: Fetcher
      readonly RATE_LIMITER: DurableObjectNamespace
      readonly BREAKERS: DurableObjectNamespace
      readonly ROLLOUTS: DurableObjectNamespace
      readonly MESH_STATS: DurableObjectNamespace
      /** MeshStatsObject hosted by the runner, for reading its storage. */
      readonly LOCAL_MESH_STATS: DurableObjectNamespace
      readonly RATE_LIMIT: RateLimit
      /** Every mesh Worker's public identity keys. */
      readonly MESH_PUBLIC_KEYS: string
      /** Every mesh Worker's private identity key by name, and an unpublished "stranger": the tests sign as any of them. */
      readonly TEST_MESH_KEYS: string
      readonly TEST_SIGNING_KEYS: string
      readonly AUTH_DB: D1Database
      readonly AUTH_MIGRATIONS: Array<D1Migration>
      readonly USERS_DB: D1Database
      readonly PRODUCTS_DB: D1Database
      readonly USERS_MIGRATIONS: Array<D1Migration>
      readonly PRODUCTS_MIGRATIONS: Array<D1Migration>
      readonly COUNTER: DurableObjectNamespace
      readonly LOCKS: DurableObjectNamespace
      readonly COUNTER_SHARDS: DurableObjectNamespace
      readonly CACHE_TAGS: DurableObjectNamespace
      readonly REDIS_POOL: DurableObjectNamespace
      readonly MESH_CONFIG: KVNamespace
      readonly SESSIONS: DurableObjectNamespace
      readonly QUEUE_TEST_DB: D1Database
      readonly TEST_QUEUE: Queue
      readonly TEST_DLQ: Queue
      readonly IMPORTS_DLQ: Queue
      /** The test OTLP receiver (scripts/otlp.ts) every Worker exports to. */
      readonly OTLP_RECEIVER: string
      readonly OTLP_ENDPOINT: string
      /** The test Redis (vitest.config.ts), or "" when redis-server is not installed. */
      readonly REDIS_URL: string
      /** "true" under CI, where every test must run. */
      readonly CI: string
    }
  }
}
