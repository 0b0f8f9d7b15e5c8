/**
 * The per-Worker runtime, inside workerd: layer built once per isolate,
 * typed errors as problems, env and waitUntil as services, and the queue,
 * scheduled and Durable Object adapters.
 */
import {
  createExecutionContext,
  createMessageBatch,
  createScheduledController,
  evictDurableObject,
  getQueueResult,
  runDurableObjectAlarm,
  runInDurableObject,
  waitOnExecutionContext
} from "cloudflare:test"
import { env } from "cloudflare:workers"
import { Config, Context, Effect, Layer, Schema } from "effect"
import { HttpApiError } from "effect/http-api"
import { describe, expect, it } from "vitest"
import * as Bindings from "../../src/runtime/Bindings.ts"
import * as Problem from "../../src/runtime/Problem.ts"
import * as Worker from "../../src/runtime/Worker.ts"
import { counterBuilds } from "../fixtures/runner.ts"

const request = (path = "/") => new Request(`http://worker${path}`) as Request<unknown, IncomingRequestCfProperties>

class Greeting extends Context.Service<Greeting, { readonly text: string }>()("test/Greeting") {}

class OutOfStock extends HttpApiError.Problem<OutOfStock>()("OutOfStock", {
  type: "urn:test:out-of-stock",
  status: 409,
  title: "Out of stock"
}, { sku: Schema.String }) {}

class Undeclared extends Schema.TaggedError<Undeclared>()("Undeclared", { secret: Schema.String }) {}

const fetchOf = (worker: ExportedHandler<object>) => {
  if (worker.fetch === undefined) throw new Error("no fetch handler")
  return worker.fetch
}

describe("Worker.make", () => {
  it("builds the layer exactly once per isolate, however many requests arrive", async () => {
    let builds = 0
    const worker = Worker.make({
      name: "counted",
      // Yielding makes the build asynchronous, so the first requests all wait on one build.
      layer: Layer.effect(Greeting, Effect.andThen(Effect.yieldNow, Effect.sync(() => ({ text: `build ${++builds}` })))),
      fetch: () => Greeting.useSync((greeting) => new Response(greeting.text))
    })
    const fetch = fetchOf(worker)
    const concurrent = await Promise.all(
      Array.from({ length: 50 }, () => fetch(request(), env, createExecutionContext()))
    )
    for (let i = 0; i < 50; i++) await fetch(request(), env, createExecutionContext())
    expect(builds).toBe(1)
    expect(new Set(await Promise.all(concurrent.map((response) => response.text())))).toEqual(new Set(["build 1"]))
  })

  it("returns the Response itself, without a promise, when the handler completes synchronously", async () => {
    const fetch = fetchOf(Worker.make({
      name: "sync",
      layer: Layer.succeed(Greeting, { text: "hi" }),
      fetch: () => Greeting.useSync((greeting) => new Response(greeting.text))
    }))
    await fetch(request(), env, createExecutionContext()) // the first call builds the layer
    const result = fetch(request(), env, createExecutionContext())
    expect(result).toBeInstanceOf(Response)
    expect(await (result as Response).text()).toBe("hi")
  })

  it("renders a typed problem with its status, type, title and fields as application/problem+json", async () => {
    const fetch = fetchOf(Worker.make({
      name: "problem",
      layer: Layer.empty,
      fetch: () => Effect.fail(new OutOfStock({ sku: "A-1", detail: "Only 0 left" }))
    }))
    const response = await fetch(request(), env, createExecutionContext())
    expect(response.status).toBe(409)
    expect(response.headers.get("content-type")).toBe("application/problem+json")
    expect(await response.json()).toEqual({
      type: "urn:test:out-of-stock",
      title: "Out of stock",
      status: 409,
      detail: "Only 0 left",
      sku: "A-1"
    })
  })

  it.each([
    ["a typed error that is not a problem", Effect.fail(new Undeclared({ secret: "s3cret" }))],
    ["a defect", Effect.die(new Error("s3cret"))],
    ["a thrown exception", Effect.sync((): Response => { throw new Error("s3cret") })]
  ])("answers %s with a bare 500 problem that leaks nothing", async (_, failure) => {
    const fetch = fetchOf(Worker.make({ name: "failing", layer: Layer.empty, fetch: () => failure }))
    const response = await fetch(request(), env, createExecutionContext())
    expect(response.status).toBe(500)
    expect(response.headers.get("content-type")).toBe("application/problem+json")
    const body = await response.text()
    expect(JSON.parse(body)).toMatchObject({ status: 500, title: "Internal Server Error" })
    expect(body).not.toContain("s3cret")
  })

  it("renders the generic HTTP problems with their statuses", async () => {
    const cases = [
      [new Problem.BadRequest({ errors: [{ path: ["payload", "name"], message: "Expected string" }] }), 400],
      [new Problem.NotFound({}), 404],
      [new Problem.MethodNotAllowed({ allow: ["GET"] }), 405],
      [new Problem.PayloadTooLarge({ limit: 10 }), 413],
      [new Problem.UnsupportedMediaType({}), 415],
      [new Problem.BadGateway({ service: "users" }), 502],
      [new Problem.ServiceUnavailable({}), 503]
    ] as const
    for (const [error, status] of cases) {
      const response = Problem.fromError(error)
      expect(response.status).toBe(status)
      expect(response.headers.get("content-type")).toBe("application/problem+json")
      expect(await response.json()).toMatchObject({ type: "about:blank", status })
    }
  })

  it("reads vars through Config and bindings through typed accessors", async () => {
    const fetch = fetchOf(Worker.make({
      name: "config",
      layer: Layer.effect(
        Greeting,
        Effect.gen(function*() {
          const text = yield* Config.String("GREETING")
          const echo = yield* Bindings.fetcher("ECHO")
          return { text: `${text}:${typeof echo.fetch}` }
        })
      ),
      fetch: () => Greeting.useSync((greeting) => new Response(greeting.text))
    }))
    const response = await fetch(request(), { GREETING: "hello", ECHO: env.ECHO, OTLP_ENDPOINT: env.OTLP_ENDPOINT }, createExecutionContext())
    expect(await response.text()).toBe("hello:function")
  })

  it("fails the build with a typed error naming a missing binding, answers 500, and retries the build", async () => {
    let attempts = 0
    const layer = Layer.effect(
      Greeting,
      Effect.gen(function*() {
        attempts++
        yield* Bindings.fetcher("USERS")
        return { text: "built" }
      })
    )
    expect(Effect.runSyncExit(Effect.provide(Bindings.fetcher("USERS"), Bindings.WorkerEnv.layer({})))).toMatchObject({
      _tag: "Failure"
    })
    const fetch = fetchOf(Worker.make({
      name: "missing",
      layer,
      fetch: () => Greeting.useSync((greeting) => new Response(greeting.text))
    }))
    const failed = await fetch(request(), { OTLP_ENDPOINT: env.OTLP_ENDPOINT }, createExecutionContext())
    expect(failed.status).toBe(500)
    const fixed = await fetch(request(), { USERS: env.ECHO, OTLP_ENDPOINT: env.OTLP_ENDPOINT }, createExecutionContext())
    expect(await fixed.text()).toBe("built")
    expect(attempts).toBe(2)
  })

  it("runs waitUntil work after the response, through ctx.waitUntil", async () => {
    let finished = false
    const fetch = fetchOf(Worker.make({
      name: "background",
      layer: Layer.empty,
      fetch: () =>
        Effect.as(
          Bindings.waitUntil(Effect.andThen(Effect.sleep("20 millis"), Effect.sync(() => (finished = true)))),
          new Response("sent")
        )
    }))
    const ctx = createExecutionContext()
    const response = await fetch(request(), env, ctx)
    expect(await response.text()).toBe("sent")
    expect(finished).toBe(false)
    await waitOnExecutionContext(ctx)
    expect(finished).toBe(true)
  })

  it("runs queue batches on the Worker's services; a failure retries the batch", async () => {
    const seen: Array<unknown> = []
    const worker = Worker.make({
      name: "consumer",
      layer: Layer.empty,
      queue: (batch: MessageBatch<{ readonly n: number }>) =>
        Effect.forEach(batch.messages, (message) =>
          message.body.n < 0
            ? Effect.die(new Error("poison"))
            : Effect.sync(() => {
              seen.push(message.body.n)
              message.ack()
            }))
    })
    const queue = worker.queue!
    const ok = createMessageBatch("jobs", [
      { id: "a", timestamp: 0, attempts: 1, body: { n: 1 } },
      { id: "b", timestamp: 0, attempts: 1, body: { n: 2 } }
    ])
    const ctx = createExecutionContext()
    await queue(ok, env, ctx)
    expect((await getQueueResult(ok, ctx)).explicitAcks).toEqual(["a", "b"])
    expect(seen).toEqual([1, 2])

    const poisoned = createMessageBatch("jobs", [{ id: "c", timestamp: 0, attempts: 1, body: { n: -1 } }])
    await expect(Promise.resolve(queue(poisoned, env, createExecutionContext()))).rejects.toThrow(/poison/)
  })

  it("runs scheduled events on the Worker's services", async () => {
    const crons: Array<string> = []
    const worker = Worker.make({
      name: "cron",
      layer: Layer.succeed(Greeting, { text: "tick" }),
      scheduled: (controller) => Greeting.useSync((greeting) => void crons.push(`${greeting.text} ${controller.cron}`))
    })
    await worker.scheduled!(createScheduledController({ cron: "*/5 * * * *" }), env, createExecutionContext())
    expect(crons).toEqual(["tick */5 * * * *"])
  })
})

describe("DurableObjects.make", () => {
  it("builds the layer once per object, serves fetch, RPC and alarms, and keeps storage across evictions", async () => {
    const name = `counter-${crypto.randomUUID()}`
    const stub = env.COUNTER.get(env.COUNTER.idFromName(name))
    // Bodies are read: an unread body keeps its request in flight, and eviction waits for it.
    for (let i = 0; i < 3; i++) await (await stub.fetch("http://counter/", { method: "POST" })).text()
    expect(await (await stub.fetch("http://counter/")).json()).toEqual({ value: 3 })
    expect(await (stub as unknown as { increment(): Promise<number> }).increment()).toBe(4)

    await runInDurableObject(stub, (_, state) => state.storage.setAlarm(Date.now() + 60_000))
    expect(await runDurableObjectAlarm(stub)).toBe(true)
    expect(await (await stub.fetch("http://counter/")).json()).toEqual({ value: 5 })
    expect(counterBuilds.get(name)).toBe(1)

    await evictDurableObject(stub)
    expect(await (await stub.fetch("http://counter/")).json()).toEqual({ value: 5 })
    expect(counterBuilds.get(name)).toBe(2)
  })
})
