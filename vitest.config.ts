/**
 * Tests run inside workerd. The runner Worker (test/fixtures/worker.ts) holds
 * the test files; the five mesh Workers run beside it as real Workers, bundled
 * from source and configured from their own wrangler files, so black-box tests
 * go through the gateway exactly as a client would.
 */
import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-plugin"
import { join } from "node:path"
import { defineConfig } from "vitest/config"
import { generateIdentitySecret, generateKey } from "./scripts/keys.ts"
import { buildMesh, root } from "./scripts/mesh.ts"
import { startReceiver } from "./scripts/otlp.ts"

/**
 * An upstream that answers with what it received, and with hop-by-hop
 * response headers, to test forwarding over a real service binding.
 */
const echo = {
  name: "echo",
  modules: true,
  compatibilityDate: "2026-11-01",
  script: `export default {
    async fetch(request) {
      return Response.json(
        { method: request.method, url: request.url, headers: [...request.headers], body: await request.text() },
        { headers: { connection: "x-upstream-secret", "x-upstream-secret": "1", "keep-alive": "timeout=5", "x-kept": "1" } }
      )
    }
  }`
}

/**
 * An upstream that fails on request, for the resilience policies: it answers
 * `/status/<code>` with that status (and `?retryAfter=`), hangs on `/hang`
 * until the caller aborts, and reports per `?key=` how often it was called
 * and whether a hung call was aborted (`/count`).
 */
const flaky = {
  name: "flaky",
  modules: true,
  compatibilityDate: "2026-11-01",
  compatibilityFlags: ["enable_request_signal"],
  script: `
    const calls = new Map()
    const aborted = new Set()
    export default {
      async fetch(request) {
        const url = new URL(request.url)
        const key = url.searchParams.get("key") ?? ""
        if (url.pathname === "/count") return Response.json({ calls: calls.get(key) ?? 0, aborted: aborted.has(key) })
        calls.set(key, (calls.get(key) ?? 0) + 1)
        if (url.pathname === "/hang") {
          request.signal.addEventListener("abort", () => aborted.add(key))
          await new Promise((resolve) => setTimeout(resolve, 30000))
          return new Response("too late")
        }
        const status = Number(url.pathname.split("/")[2] ?? 200)
        const retryAfter = url.searchParams.get("retryAfter")
        return new Response(request.method + " " + status, {
          status,
          headers: retryAfter === null ? {} : { "retry-after": retryAfter }
        })
      }
    }
  `
}

export default defineConfig({
  plugins: [
    cloudflareTest(async () => {
      // Fresh secrets for every run. The auth service publishes two keys (the
      // second as if freshly rotated in) and signs with the first; the third
      // is a retired key it no longer publishes. Tests get all three to forge with.
      const [signing, rotatedIn, retired] = await Promise.all([generateKey(), generateKey(), generateKey()])
      const identitySecret = generateIdentitySecret()
      // Every Worker exports its traces and metrics to a real OTLP/HTTP
      // receiver (scripts/otlp.ts) on a free port; the tests read what it got.
      const receiver = await startReceiver({ port: 0, unref: true })
      const telemetry = {
        OTLP_ENDPOINT: receiver.url,
        // The gateway exports OTLP/JSON (the default), the others protobuf: the receiver decodes both.
        OTLP_PROTOCOL: "protobuf",
        METRICS_INTERVAL_SECONDS: "0",
        DEPLOYMENT_ENVIRONMENT: "test"
      }
      const mesh = await buildMesh(join(root, ".build/test"), {
        secrets: (name) => ({
          ...telemetry,
          ...(name === "gateway" ? { OTLP_PROTOCOL: "json" } : {}),
          MESH_IDENTITY_SECRET: identitySecret,
          ...(name === "auth"
            ? {
              AUTH_SIGNING_KEYS: JSON.stringify({ active: signing.kid, keys: [signing, rotatedIn] }),
              // Fast hashing keeps the suite quick; production uses the 100,000 default.
              PBKDF2_ITERATIONS: "1000"
            }
            : {}),
          // Traffic splits and flags take effect at once in tests (production keeps them 10 s).
          ...(name === "router" ? { TRAFFIC_CACHE_SECONDS: "0" } : {}),
          ...(name === "sessions" ? { FLAGS_CACHE_SECONDS: "0" } : {}),
          ...(name === "gateway"
            ? {
              // A disabled user is refused at once, rather than within the production cache time.
              USER_STATUS_TTL_SECONDS: "0",
              // Limits the suite cannot hit by accident, and a tight one for the rate limit tests.
              RATE_LIMITS: [
                { name: "tight", prefix: "/api/products", methods: ["HEAD"], limit: 3, windowSeconds: 3600, store: "durable-object" },
                { name: "api", prefix: "/api", limit: 100000, windowSeconds: 60 }
              ]
            }
            : {})
        })
      })
      const d1 = (name: string) => mesh.find((options) => options.name === `meshwork-${name}`)?.d1Databases ?? {}
      return {
        main: "test/fixtures/worker.ts",
        miniflare: {
          compatibilityDate: "2026-11-01",
          serviceBindings: {
            GATEWAY: "meshwork-gateway",
            ROUTER: "meshwork-router",
            AUTH: "meshwork-auth",
            USERS: "meshwork-users",
            PRODUCTS: "meshwork-products",
            ECHO: "echo",
            FLAKY: "flaky"
          },
          d1Databases: { ...d1("users"), ...d1("products"), ...d1("auth"), QUEUE_TEST_DB: "queue-test" },
          // The mesh's configuration store, shared with the gateway, router and sessions.
          kvNamespaces: { MESH_CONFIG: "00000000000040008000000000000c0f" },
          // A job queue the runner consumes (test/queues.test.ts), with its dead-letter queue.
          queueProducers: {
            TEST_QUEUE: { queueName: "test-jobs" },
            TEST_DLQ: { queueName: "test-jobs-dlq" },
            // The products Worker's dead-letter queue, to hand it messages no consumer could read.
            IMPORTS_DLQ: { queueName: "meshwork-product-imports-dlq" }
          },
          queueConsumers: {
            "test-jobs": { maxBatchSize: 10, maxBatchTimeout: 1, maxRetries: 2, deadLetterQueue: "test-jobs-dlq" },
            "test-jobs-dlq": { maxBatchSize: 10, maxBatchTimeout: 1, maxRetries: 2 }
          },
          durableObjects: {
            COUNTER: { className: "Counter", useSQLite: true },
            LOCKS: { className: "LockObject", useSQLite: true },
            COUNTER_SHARDS: { className: "CounterShardObject", useSQLite: true },
            CACHE_TAGS: { className: "CacheTagIndexObject", useSQLite: true },
            REDIS_POOL: { className: "RedisPoolObject", useSQLite: true },
            SESSIONS: { className: "SessionObject", scriptName: "meshwork-sessions", useSQLite: true },
            RATE_LIMITER: { className: "RateLimiterObject", scriptName: "meshwork-gateway", useSQLite: true },
            BREAKERS: { className: "CircuitBreakerObject", scriptName: "meshwork-router", useSQLite: true }
          },
          ratelimits: { RATE_LIMIT: { namespace_id: "1001", simple: { limit: 10, period: 60 } } },
          bindings: {
            ...telemetry,
            OTLP_RECEIVER: receiver.url,
            MESH_IDENTITY_SECRET: identitySecret,
            TEST_SIGNING_KEYS: JSON.stringify({ signing, rotatedIn, retired }),
            AUTH_MIGRATIONS: await readD1Migrations(join(root, "src/services/auth/migrations")),
            USERS_MIGRATIONS: await readD1Migrations(join(root, "src/services/users/migrations")),
            PRODUCTS_MIGRATIONS: await readD1Migrations(join(root, "src/services/products/migrations"))
          },
          workers: [...mesh, echo, flaky]
        }
      }
    })
  ],
  test: {
    setupFiles: ["test/setup.ts"],
    include: ["test/**/*.test.ts"]
  }
})
