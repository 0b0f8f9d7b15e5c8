/**
 * Batched lookups by key, on Effect's `Request` and `RequestResolver`.
 *
 * ```ts
 * const product = yield* Batching.lookups({
 *   lookup: (ids) => fetchProducts(ids),            // one upstream call: ids -> Map(id -> product)
 *   missing: (id) => new ProductNotFound({ productId: id }),
 *   maxBatchSize: 10,                                 // defaults: 10 keys ...
 *   window: "100 millis"                              // ... collected for up to 100 ms
 * })
 * const lines = yield* Effect.forEach(cart, (line) => product(line.productId), { concurrency: "unbounded" })
 * ```
 *
 * Lookups made within the window go out as one call of at most
 * `maxBatchSize` distinct keys; a key asked for again joins its pending
 * lookup, or gets its answer, rather than taking a place in a batch. Each
 * lookup gets its own result: a key the upstream did not return fails with
 * `missing(key)` alone, and a failed call fails only the lookups of its batch.
 *
 * Make the lookup function inside the request that uses it (it is an
 * Effect for that reason): Workers forbid one request from completing
 * another's I/O, so a resolver must not be shared across requests. Inside one
 * request a fan-out issues all its lookups at once, and a short window
 * (even 0: one turn of the scheduler) already batches them.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Exit from "effect/Exit"
import * as Request from "effect/Request"
import * as RequestResolver from "effect/RequestResolver"

export interface Options<A, E, E2, R> {
  /** One upstream call for up to `maxBatchSize` distinct keys; the map holds the keys it found. */
  readonly lookup: (keys: readonly [string, ...Array<string>]) => Effect.Effect<ReadonlyMap<string, A>, E, R>
  /** The error of a key the upstream did not return. */
  readonly missing: (key: string) => E2
  /** Most distinct keys in one call. Default 10. */
  readonly maxBatchSize?: number | undefined
  /** How long a batch collects lookups before it is sent. Default 100 ms. */
  readonly window?: Duration.Input | undefined
}

export const defaultMaxBatchSize = 10
export const defaultWindow = Duration.millis(100)

interface Lookup extends Request.Request<unknown, unknown> {
  readonly _tag: "Lookup"
  readonly key: string
}
const Lookup = Request.tagged<Lookup>("Lookup")

/** A lookup function batching its calls; see the module's documentation. */
export const lookups = <A, E, E2, R>(options: Options<A, E, E2, R>): Effect.Effect<(key: string) => Effect.Effect<A, E | E2>, never, R> =>
  Effect.map(Effect.context<R>(), (context) => {
    const maxBatchSize = options.maxBatchSize ?? defaultMaxBatchSize
    if (!Number.isInteger(maxBatchSize) || maxBatchSize < 1) throw new RangeError(`maxBatchSize is a positive integer, not ${maxBatchSize}`)
    const window = Duration.fromInputUnsafe(options.window ?? defaultWindow)
    /** The exits that are the upstream's answer (found or missing), as opposed to a failed call. */
    const answered = new WeakSet<object>()
    /**
     * Per key: the lookups waiting for the one in a batch, then its answer.
     * Answers (found or missing) are kept for the life of the function, that
     * is of the request; a failed call is forgotten, so a later lookup retries.
     */
    const known = new Map<string, { exit: Exit.Exit<unknown, unknown> | undefined; readonly waiting: Array<Request.Entry<Lookup>> }>()

    const resolver = RequestResolver.makeWith<Lookup>({
      batchKey: () => "lookups",
      preCheck: (entry) => {
        const key = entry.request.key
        const seen = known.get(key)
        if (seen !== undefined) {
          if (seen.exit !== undefined) entry.completeUnsafe(seen.exit as never)
          else seen.waiting.push(entry)
          return false
        }
        const state = { exit: undefined as Exit.Exit<unknown, unknown> | undefined, waiting: [] as Array<Request.Entry<Lookup>> }
        known.set(key, state)
        const complete = entry.completeUnsafe
        entry.completeUnsafe = (exit) => {
          const waiting = state.waiting.splice(0)
          if (Exit.isSuccess(exit) || answered.has(exit)) state.exit = exit
          else known.delete(key)
          complete(exit)
          if (waiting.length === 0) return
          if (Exit.hasInterrupts(exit)) {
            // The first caller was interrupted, not the lookup: the others look the key up again.
            void Effect.runPromiseExit(Effect.provideContext(lookup(key), context)).then((again) => {
              for (const other of waiting) other.completeUnsafe(again as never)
            })
            return
          }
          for (const other of waiting) other.completeUnsafe(exit)
        }
        return true
      },
      delay: Duration.isZero(window) ? Effect.yieldNow : Effect.sleep(window),
      collectWhile: (entries) => entries.size < maxBatchSize,
      runAll: (entries) => {
        const keys = entries.map((entry) => entry.request.key) as unknown as readonly [string, ...Array<string>]
        return options.lookup(keys).pipe(
          // One span per batch, in the trace of the request that made the lookup function.
          Effect.withSpan("batch.lookup", { attributes: { "meshwork.batch.size": keys.length } }, { captureStackTrace: false }),
          Effect.provideContext(context),
          Effect.exit,
          Effect.map((exit) => {
            for (const entry of entries) {
              if (Exit.isFailure(exit)) entry.completeUnsafe(exit)
              else {
                const found = exit.value.get(entry.request.key)
                const answer = found === undefined && !exit.value.has(entry.request.key)
                  ? Exit.fail(options.missing(entry.request.key))
                  : Exit.succeed(found)
                answered.add(answer)
                entry.completeUnsafe(answer)
              }
            }
          })
        )
      }
    })
    const lookup = (key: string) => Effect.request(Lookup({ key }), resolver) as Effect.Effect<A, E | E2>
    return lookup
  })
