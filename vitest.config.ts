/**
 * Two projects. `workers`: the tests of test/framework (the framework's own
 * pieces) and test/mesh (black-box, through the gateway) run inside workerd;
 * the runner Worker (test/fixtures/runner.ts) holds them, and the mesh's
 * Workers run beside it as real Workers, bundled from source and configured
 * from their own wrangler files, with the fixture upstreams of test/fixtures.
 * `node`: the tests of test/node (the import rules, the command-line tools,
 * the docs) run in Node.
 *
 * Each of vitest's three workers runs one workerd with the whole mesh and
 * serves it test files one after another (`isolate: false`): starting the
 * mesh costs seconds, and the tests never rely on a fresh one. The node
 * project's files run after the workers project's, on one mesh started
 * at the beginning (test/node/mesh-setup.ts).
 */
import { cloudflareTest, readD1Migrations } from "@cloudflare/vitest-plugin"
import { join } from "node:path"
import { defineConfig } from "vitest/config"
import { generateKey, generateMeshKeys, keepsTraces, meshNameOf } from "./scripts/keys.ts"
import { buildMesh, bundle, entry, miniflareOptions, root, workers as meshWorkers } from "./scripts/mesh.ts"
import { startReceiver } from "./scripts/otlp.ts"
import { installHint, startRedis } from "./scripts/redis.ts"

/** The examples' Workers, configured from their own wrangler files (test/framework/examples.test.ts). */
const examples = [
  { name: "hello", config: "examples/hello/wrangler.toml" },
  { name: "greeter", config: "examples/hello/greeter.wrangler.toml" }
]

/** A fixture Worker of test/fixtures, bundled. */
const fixture = async (name: string, extra: Record<string, unknown> = {}) => ({
  name,
  modules: true,
  compatibilityDate: "2026-11-01",
  scriptPath: await bundle(join(root, "test/fixtures", `${name}.ts`), join(root, ".build/test", `${name}.js`)),
  ...extra
})

const workers = {
  plugins: [
    cloudflareTest(async () => {
      // Fresh secrets for every run. The auth service publishes two keys (the
      // second as if freshly rotated in) and signs with the first; the third
      // is a retired key it no longer publishes. Tests get all three to forge with.
      const [signing, rotatedIn, retired] = await Promise.all([generateKey(), generateKey(), generateKey()])
      // A mesh identity key per Worker (blue and green users share one), and one
      // the mesh never published, for the tests to forge with.
      const meshKeys = await generateMeshKeys([...new Set(meshWorkers.map((worker) => meshNameOf(worker.name)))])
      const stranger = await generateMeshKeys(["gateway"])
      const meshEnv = (name: string) => ({
        MESH_SIGNING_KEY: JSON.stringify(meshKeys.signing[meshNameOf(name)]),
        MESH_PUBLIC_KEYS: JSON.stringify(meshKeys.published)
      })
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
          ...meshEnv(name),
          // The mesh's Workers keep their spans in the mesh too (the console's traces; test/mesh/live.test.ts).
          ...(keepsTraces(name) ? { KEEP_TRACES: "true" } : {}),
          ...(name === "auth"
            ? {
              AUTH_SIGNING_KEYS: JSON.stringify({ active: signing.kid, keys: [signing, rotatedIn] }),
              // Fast hashing keeps the suite quick; production uses the 100,000 default.
              PBKDF2_ITERATIONS: "1000",
              // Login throttling the tests can reach and wait out (production: 5 and 900 s, 20 and 300 s).
              LOGIN_CLIENT_FREE_FAILURES: "3",
              LOGIN_CLIENT_MAX_BLOCK_SECONDS: "2",
              LOGIN_ACCOUNT_FREE_FAILURES: "10",
              LOGIN_ACCOUNT_MAX_BLOCK_SECONDS: "2"
            }
            : {}),
          // Traffic splits and flags take effect at once in tests (production keeps them 10 s).
          // FAULT_INJECTION: faults an admin sets on a split (test/mesh/live.test.ts) are injected.
          ...(name === "router" ? { TRAFFIC_CACHE_SECONDS: "0", FAULT_INJECTION: "true" } : {}),
          // Live figures leave with every next request (deployed: every 10 s), so the tests read them at once.
          ...(name === "router" || name === "gateway" ? { LIVE_STATS_INTERVAL_SECONDS: "0" } : {}),
          ...(name === "sessions" ? { FLAGS_CACHE_SECONDS: "0" } : {}),
          ...(name === "gateway"
            ? {
              // A disabled user is refused at once, rather than within the production cache time.
              USER_STATUS_TTL_SECONDS: "0",
              // A revoked API key stops working within 2 s here (10 s in production).
              API_KEY_CACHE_SECONDS: "2",
              // Limits the suite cannot hit by accident, and a tight one for the rate limit tests.
              RATE_LIMITS: [
                { name: "tight", prefix: "/api/products", methods: ["HEAD"], limit: 3, windowSeconds: 3600, store: "durable-object" },
                { name: "api", prefix: "/api", limit: 100000, windowSeconds: 60 }
              ]
            }
            : {})
        })
      })
      // Real Redis for the tests of the Redis store and pool: a server of their own, or they skip.
      const redis = await startRedis()
      const ci = process.env["CI"] === "true"
      if (redis === undefined) {
        console.log(`redis-server not found: the Redis tests ${ci ? "fail (CI needs it)" : "skip"} (${installHint})`)
      }
      const exampleWorkers = await Promise.all(examples.map(async (example) =>
        miniflareOptions(example, await bundle(entry(example), join(root, ".build/test", `example-${example.name}.js`)), telemetry)
      ))
      // The import queues answer in tests within a second, not the deployed 2 and 5 (products' wrangler.toml).
      for (const consumer of Object.values(mesh.find((options) => options.name === "meshwork-products")?.queueConsumers ?? {})) {
        if (typeof consumer === "object") consumer.maxBatchTimeout = 1
      }
      const d1 = (name: string) => mesh.find((options) => options.name === `meshwork-${name}`)?.d1Databases ?? {}
      return {
        main: "test/fixtures/runner.ts",
        miniflare: {
          compatibilityDate: "2026-11-01",
          serviceBindings: {
            GATEWAY: "meshwork-gateway",
            ROUTER: "meshwork-router",
            AUTH: "meshwork-auth",
            USERS: "meshwork-users",
            PRODUCTS: "meshwork-products",
            ECHO: "echo",
            HELLO: "hello",
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
            LOCAL_MESH_STATS: { className: "MeshStatsObject", useSQLite: true },
            REDIS_POOL: { className: "RedisPoolObject", useSQLite: true },
            SESSIONS: { className: "SessionObject", scriptName: "meshwork-sessions", useSQLite: true },
            RATE_LIMITER: { className: "RateLimiterObject", scriptName: "meshwork-gateway", useSQLite: true },
            BREAKERS: { className: "CircuitBreakerObject", scriptName: "meshwork-router", useSQLite: true },
            ROLLOUTS: { className: "RolloutObject", scriptName: "meshwork-router", useSQLite: true },
            MESH_STATS: { className: "MeshStatsObject", scriptName: "meshwork-router", useSQLite: true }
          },
          ratelimits: { RATE_LIMIT: { namespace_id: "1001", simple: { limit: 10, period: 60 } } },
          bindings: {
            ...telemetry,
            OTLP_RECEIVER: receiver.url,
            REDIS_URL: redis?.url ?? "",
            CI: ci ? "true" : "",
            MESH_PUBLIC_KEYS: JSON.stringify(meshKeys.published),
            TEST_MESH_KEYS: JSON.stringify({ ...meshKeys.signing, stranger: stranger.signing["gateway"] }),
            TEST_SIGNING_KEYS: JSON.stringify({ signing, rotatedIn, retired }),
            AUTH_MIGRATIONS: await readD1Migrations(join(root, "src/services/auth/migrations")),
            USERS_MIGRATIONS: await readD1Migrations(join(root, "src/services/users/migrations")),
            PRODUCTS_MIGRATIONS: await readD1Migrations(join(root, "src/services/products/migrations"))
          },
          workers: [...mesh, ...exampleWorkers, await fixture("echo"), await fixture("flaky", { compatibilityFlags: ["enable_request_signal"] })]
        }
      }
    })
  ],
  test: {
    name: "workers",
    setupFiles: ["test/setup.ts"],
    include: ["test/framework/**/*.test.ts", "test/mesh/**/*.test.ts"],
    isolate: false,
    sequence: { groupOrder: 0 }
  }
}

export default defineConfig({
  test: {
    // Logs of passing tests (many fail on purpose: refused tokens, injected faults) stay out of the way.
    silent: "passed-only",
    // Many tests wait on real work (PBKDF2 logins, queue retries, a mesh starting) that takes
    // seconds on a busy two-core machine; none asserts a duration.
    testTimeout: 30_000,
    // Three at once on two cores: the tests mostly wait on workerd, on the mesh or on a browser.
    // The workers project runs three workerd processes (one each), the node project's files follow.
    maxWorkers: 3,
    projects: [
      workers,
      {
        test: {
          name: "node",
          include: ["test/node/**/*.test.ts"],
          environment: "node",
          // One mesh (npm start) for the files that need one running, started in the
          // background at the beginning; these files run after the workers project's,
          // by when it is up, so none of them holds a worker waiting for it.
          globalSetup: ["test/node/mesh-setup.ts"],
          sequence: { groupOrder: 1 },
          hookTimeout: 200_000
        }
      }
    ]
  }
})
