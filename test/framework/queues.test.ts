/**
 * Queues end to end in workerd: a real queue with a dead-letter queue,
 * consumed by the runner (test/fixtures/worker.ts), and the products
 * Worker's import jobs through the gateway.
 */
import { createExecutionContext, createMessageBatch, getQueueResult } from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Effect, Layer, Option, Tracer } from "effect"
import { beforeAll, describe, expect, it } from "vitest"
import { WorkerEnv } from "../../src/runtime/Bindings.ts"
import * as D1 from "../../src/runtime/D1.ts"
import * as Queues from "../../src/runtime/Queues.ts"
import * as Worker from "../../src/runtime/Worker.ts"
import { TestJob, Unfixable } from "../fixtures/runner.ts"
import { eventually, unique } from "../helpers.ts"

const db = env.QUEUE_TEST_DB

beforeAll(async () => {
  await db.batch([
    db.prepare("CREATE TABLE IF NOT EXISTS queue_processed (id TEXT PRIMARY KEY, queue TEXT NOT NULL, outcome TEXT NOT NULL, processed_at TEXT NOT NULL)"),
    db.prepare("CREATE TABLE IF NOT EXISTS deliveries (id TEXT NOT NULL, queue TEXT NOT NULL, attempts INTEGER NOT NULL)"),
    db.prepare("CREATE TABLE IF NOT EXISTS undecodable (message_id TEXT PRIMARY KEY, body TEXT NOT NULL)")
  ])
})

const rows = async <T>(query: string, ...params: Array<unknown>) =>
  (await db.prepare(query).bind(...params).all<T>()).results

describe("a queue with a dead-letter queue", () => {
  it("settles every message once: processed, or dead-lettered after its retries or at once, none lost", async () => {
    const producer = Queues.makeProducer(env.TEST_QUEUE, "test-jobs", TestJob)
    const jobs = [
      ...Array.from({ length: 30 }, (_, n) => ({ n, kind: "ok" as const })),
      ...Array.from({ length: 5 }, (_, n) => ({ n: 100 + n, kind: "flaky" as const })),
      ...Array.from({ length: 5 }, (_, n) => ({ n: 200 + n, kind: "poison" as const })),
      ...Array.from({ length: 5 }, (_, n) => ({ n: 300 + n, kind: "permanent" as const }))
    ]
    const ids = await Effect.runPromise(producer.sendBatch(jobs))
    // A producer that sends one message twice (say, a retried request): one id, two messages.
    const twice = `twice-${unique()}`
    await Effect.runPromise(producer.send({ n: 400, kind: "ok" }, { id: twice }))
    await Effect.runPromise(producer.send({ n: 400, kind: "ok" }, { id: twice }))
    // Messages no consumer can read.
    const marker = unique()
    await env.TEST_QUEUE.sendBatch([{ body: { garbage: marker } }, { body: `not an envelope ${marker}` }])

    const all = [...ids, twice]
    const placeholders = all.map(() => "?").join(", ")
    const settled = () => rows<{ id: string; outcome: string }>(`SELECT id, outcome FROM queue_processed WHERE id IN (${placeholders})`, ...all)
    const kept = () => rows<{ body: string }>("SELECT body FROM undecodable WHERE body LIKE ?", `%${marker}%`)
    await eventually(async () => (await settled()).length === all.length && (await kept()).length === 2)

    const outcomes = new Map((await settled()).map((row) => [row.id, row.outcome]))
    jobs.forEach((job, i) => {
      expect(outcomes.get(ids[i]!), `${job.kind} ${job.n}`).toBe(job.kind === "ok" || job.kind === "flaky" ? "processed" : "dead")
    })
    expect(outcomes.get(twice)).toBe("processed")

    // How often each kind was delivered to the job queue: poison ones 1 + max_retries (2) times, permanent ones once.
    const deliveries = await rows<{ id: string; count: number }>(
      `SELECT id, COUNT(*) AS count FROM deliveries WHERE queue = 'test-jobs' AND id IN (${placeholders}) GROUP BY id`,
      ...all
    )
    const deliveriesOf = new Map(deliveries.map((row) => [row.id, row.count]))
    const expected = { ok: 1, flaky: 2, poison: 3, permanent: 1 }
    jobs.forEach((job, i) => expect(deliveriesOf.get(ids[i]!), `${job.kind} ${job.n}`).toBe(expected[job.kind]))
    // The duplicate was delivered twice and counted once.
    expect(deliveriesOf.get(twice)).toBe(2)
  })

  it("acks, retries with backoff or dead-letters each message of a batch on its own", async () => {
    const envelope = (id: string, job: typeof TestJob.Type) => ({ id, body: job, sentAt: Date.now() })
    const batch = createMessageBatch<unknown>("test-jobs", [
      { id: "m-ok", timestamp: new Date(), attempts: 1, body: envelope(`ok-${unique()}`, { n: 1, kind: "ok" }) },
      { id: "m-poison", timestamp: new Date(), attempts: 1, body: envelope(`poison-${unique()}`, { n: 2, kind: "poison" }) },
      { id: "m-permanent", timestamp: new Date(), attempts: 1, body: envelope(`perm-${unique()}`, { n: 3, kind: "permanent" }) },
      { id: "m-garbage", timestamp: new Date(), attempts: 1, body: { n: "not a job" } }
    ])
    // The runner's consumer, with a backoff of 4 s to see it applied.
    const consumer = Worker.make({
      name: "batch-consumer",
      layer: Layer.empty,
      queue: Queues.consumer({
        name: "test-jobs",
        body: TestJob,
        deadLetter: "TEST_DLQ",
        backoff: { base: "4 seconds" },
        isPermanent: (error: Unfixable | string) => error instanceof Unfixable,
        handle: (job) => job.kind === "ok" ? Effect.void : job.kind === "permanent" ? Effect.fail(new Unfixable()) : Effect.fail("transient")
      })
    })
    // The plugin's result does not keep retry delays; record them on the way.
    const delays = new Map<string, number | undefined>()
    for (const message of batch.messages) {
      const retry = message.retry.bind(message)
      Object.defineProperty(message, "retry", {
        value: (options?: QueueRetryOptions) => {
          delays.set(message.id, options?.delaySeconds)
          retry(options)
        }
      })
    }
    const ctx = createExecutionContext()
    await consumer.queue!(batch, env, ctx)
    const result = await getQueueResult(batch, ctx)
    expect(result.retryBatch.retry).toBe(false)
    expect([...result.explicitAcks].sort()).toEqual(["m-garbage", "m-ok", "m-permanent"])
    expect(result.retryMessages).toEqual([{ msgId: "m-poison" }])
    expect([...delays.keys()]).toEqual(["m-poison"])
    expect(delays.get("m-poison")).toBeGreaterThanOrEqual(2)
    expect(delays.get("m-poison")).toBeLessThanOrEqual(4)
  })

  it("backs off exponentially, with jitter, up to its cap", async () => {
    const delays = (attempts: number, options?: Queues.Backoff) =>
      Effect.runPromise(Effect.all(Array.from({ length: 200 }, () => Queues.backoff(attempts, options))))
    for (const [attempts, full] of [[1, 2], [2, 4], [5, 32], [9, 300], [40, 300]] as const) {
      const seen = await delays(attempts)
      expect(Math.min(...seen)).toBeGreaterThanOrEqual(full / 2)
      expect(Math.max(...seen)).toBeLessThanOrEqual(full)
      if (full >= 32) expect(new Set(seen).size).toBeGreaterThan(1)
    }
    expect(Math.max(...await delays(30, { base: "1 hour", max: "1 day" }))).toBeLessThanOrEqual(12 * 3600)
  })

  it("carries the sender's trace to the consumer's span", async () => {
    let sent: Queues.Envelope | undefined
    const queue = {
      send: async (body: Queues.Envelope) => {
        sent = body
      },
      sendBatch: async () => {}
    } as unknown as Queue
    const producer = Queues.makeProducer(queue, "traced", TestJob)
    const sender = await Effect.runPromise(
      Effect.withSpan(Effect.andThen(producer.send({ n: 1, kind: "ok" }), Effect.currentSpan), "request")
    )
    expect(sent?.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/)

    const parents: Array<Tracer.AnySpan> = []
    const consumer = Worker.make({
      name: "traced-consumer",
      layer: Layer.empty,
      queue: Queues.consumer({
        name: "traced",
        body: TestJob,
        handle: () => Effect.map(Effect.currentSpan, (span) => Option.map(span.parent, (parent) => parents.push(parent)))
      })
    })
    const batch = createMessageBatch("traced", [{ id: "t", timestamp: new Date(), attempts: 1, body: sent }])
    const ctx = createExecutionContext()
    await consumer.queue!(batch, env, ctx)
    expect((await getQueueResult(batch, ctx)).explicitAcks).toEqual(["t"])
    // The consumer's span is a child of the span that sent the message (the queue.send span inside "request").
    expect(parents).toHaveLength(1)
    expect(parents[0]!.traceId).toBe(sender.traceId)
    expect(sent?.traceparent).toBe(`00-${parents[0]!.traceId}-${parents[0]!.spanId}-01`)
  })
})

describe("pruning handled messages", () => {
  it("forgets handled messages older than 14 days, and only those", async () => {
    const tag = unique()
    const day = 24 * 3600 * 1000
    const rows = [[`old-${tag}`, 15], [`edge-${tag}`, 13], [`new-${tag}`, 0]] as const
    await env.PRODUCTS_DB.batch(rows.map(([id, daysAgo]) =>
      env.PRODUCTS_DB.prepare("INSERT INTO queue_processed (id, queue, outcome, processed_at) VALUES (?, 'q', 'processed', ?)")
        .bind(id, new Date(Date.now() - daysAgo * day).toISOString())
    ))
    const deleted = await Effect.runPromise(
      Queues.pruneProcessed().pipe(Effect.provide(D1.layer("PRODUCTS_DB")), Effect.provide(WorkerEnv.layer(env)))
    )
    expect(deleted).toBeGreaterThanOrEqual(1)
    const left = await env.PRODUCTS_DB.prepare("SELECT id FROM queue_processed WHERE id LIKE ? ORDER BY id").bind(`%-${tag}`).all<{ id: string }>()
    expect(left.results.map((row) => row.id)).toEqual([`edge-${tag}`, `new-${tag}`])
  })
})
