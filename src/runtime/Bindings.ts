/**
 * The Worker's env bindings and execution context as Effect services.
 *
 * `env` is untyped at the boundary: bindings are read through the accessors
 * below, which check what they get and fail with `MissingBinding` naming the
 * binding, so a misconfigured wrangler file is a typed error at layer build,
 * never an `undefined` at request time. Plain vars and secrets are read with
 * Effect's `Config` (the runtime installs a ConfigProvider over `env`).
 */
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Predicate from "effect/Predicate"
import * as Schema from "effect/Schema"

/** The Worker's `env` object. Prefer the typed accessors in this module. */
export class WorkerEnv extends Context.Service<WorkerEnv, Readonly<Record<string, unknown>>>()(
  "meshwork/runtime/Bindings/WorkerEnv"
) {
  static readonly layer = (env: object): Layer.Layer<WorkerEnv> =>
    Layer.succeed(WorkerEnv, env as Readonly<Record<string, unknown>>)
}

/**
 * The execution context of the current invocation (fetch, queue, scheduled,
 * alarm). Work that must outlive the response goes through `waitUntil`.
 */
export class Invocation extends Context.Service<Invocation, {
  readonly waitUntil: (promise: Promise<unknown>) => void
}>()("meshwork/runtime/Bindings/Invocation") {}

export class MissingBinding extends Schema.TaggedError<MissingBinding>()("meshwork/Bindings/MissingBinding", {
  binding: Schema.String,
  expected: Schema.String
}) {
  override get message() {
    return `env.${this.binding} is not a ${this.expected} binding; check this Worker's wrangler config`
  }
}

const binding = <A>(expected: string, is: (u: unknown) => u is A) => (name: string) =>
  WorkerEnv.use((env) => {
    const value = env[name]
    return is(value) ? Effect.succeed(value) : Effect.fail(new MissingBinding({ binding: name, expected }))
  })

const hasMethods = (...methods: ReadonlyArray<string>) => (u: unknown): boolean =>
  Predicate.isObject(u) && methods.every((method) => Predicate.isFunction((u as Record<string, unknown>)[method]))

/** A service binding (or any Fetcher) named `name`. */
export const fetcher = binding("service", (u): u is Fetcher => hasMethods("fetch")(u))

/** A D1 database binding named `name`. */
export const d1 = binding("D1", (u): u is D1Database => hasMethods("prepare", "batch")(u))

/** A KV namespace binding named `name`. */
export const kv = binding("KV", (u): u is KVNamespace => hasMethods("get", "put", "list")(u))

/** A Durable Object namespace binding named `name`. */
export const durableObject = binding(
  "Durable Object",
  (u): u is DurableObjectNamespace => hasMethods("idFromName", "get")(u)
)

/** A Queue producer binding named `name`. */
export const queue = binding("Queue", (u): u is Queue => hasMethods("send", "sendBatch")(u))

/**
 * Runs `effect` after the response, under `ctx.waitUntil`, with the current
 * services. Its failure is logged, never lost, and never fails the caller.
 */
export const waitUntil = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<void, never, R | Invocation> =>
  Effect.flatMap(Effect.context<R | Invocation>(), (context) =>
    Effect.sync(() => {
      const promise = Effect.runPromiseWith(context)(
        effect.pipe(Effect.catchCause((cause) => Effect.logError("waitUntil task failed", cause)))
      )
      Context.get(context, Invocation).waitUntil(promise)
    }))
