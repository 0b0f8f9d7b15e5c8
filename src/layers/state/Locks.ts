/**
 * Leases with fencing tokens, kept by a Durable Object.
 *
 * ```ts
 * // a Worker that exports LockObject and binds it as LOCKS
 * const locks = yield* Locks
 * yield* locks.withLock(`product:${id}`, (lease) =>
 *   products.update(id, patch, lease.fencingToken)
 * )
 * ```
 *
 * A lease is `acquire(key, owner, ttl) -> { fencingToken, expiresAt }`. The
 * holder renews it before it expires; `release` is the owner's alone. Expiry
 * is an alarm the object sets for the earliest lease, and every call also
 * treats a lease past its time as free, so a holder that stops renewing (a
 * crashed isolate, a stalled request) loses the lock within its ttl.
 *
 * A lease alone cannot stop a holder that stalled past its expiry from
 * writing after someone else took the lock. The fencing token does: it
 * strictly increases per key, survives the object's restarts (it lives in the
 * object's SQLite storage, and released keys keep their last token), and a
 * store that has seen token T refuses writes carrying a lower one. Pass it to
 * every write the lock protects (the products store does, in D1).
 *
 * Each key has its own object (`Sharding.perKey`), so unrelated keys never
 * queue behind each other. Inside one object every call is one synchronous
 * SQLite transaction, which the runtime's input gate already serialises: no
 * lock is needed to implement the lock.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import * as Sharding from "./Sharding.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"

/** A held lock: pass `fencingToken` to every write it protects. */
export interface Lease {
  readonly key: string
  readonly owner: string
  readonly fencingToken: number
  /** Epoch milliseconds. */
  readonly expiresAt: number
}

/** Someone else holds the lock; it is free by `retryAfterMillis` at the latest, unless renewed. */
export class LockHeld extends Schema.TaggedError<LockHeld>()("meshwork/Locks/LockHeld", {
  key: Schema.String,
  retryAfterMillis: Schema.Number
}) {}

/** The lease expired (or was taken over) before it was renewed: stop writing under it. */
export class LockLost extends Schema.TaggedError<LockLost>()("meshwork/Locks/LockLost", {
  key: Schema.String,
  fencingToken: Schema.Number
}) {}

/** A release by someone who does not hold the lock (any more). */
export class LockNotHeld extends Schema.TaggedError<LockNotHeld>()("meshwork/Locks/LockNotHeld", {
  key: Schema.String
}) {}

/** The lock object could not be reached or failed. */
export class LockUnavailable extends Schema.TaggedError<LockUnavailable>()("meshwork/Locks/LockUnavailable", {
  key: Schema.String,
  cause: Schema.Defect()
}) {}

/** Bounds on a lease's time to live, in milliseconds. */
export const minTtlMillis = 100
export const maxTtlMillis = 10 * 60_000

const checkTtl = (ttlMillis: number) => {
  if (!Number.isInteger(ttlMillis) || ttlMillis < minTtlMillis || ttlMillis > maxTtlMillis) {
    throw new RangeError(`A lock ttl is ${minTtlMillis} to ${maxTtlMillis} ms, not ${ttlMillis}`)
  }
}

// What the object answers over RPC: plain data, turned into typed errors by the client.
export type AcquireAnswer =
  | { readonly _tag: "Acquired"; readonly fencingToken: number; readonly expiresAt: number }
  | { readonly _tag: "Held"; readonly expiresAt: number }
export type RenewAnswer = { readonly _tag: "Renewed"; readonly expiresAt: number } | { readonly _tag: "Lost" }
export type ReleaseAnswer = { readonly _tag: "Released" } | { readonly _tag: "NotOwner" }

interface LockRow {
  readonly token: number
  readonly owner: string | null
  readonly expires_at: number | null
  readonly [column: string]: SqlStorageValue
}

/**
 * The lock table of one object, over its SQLite storage. Time is Effect's
 * `Clock`, so tests drive expiry with `TestClock`.
 */
export class LockTable extends Context.Service<LockTable, {
  readonly acquire: (key: string, owner: string, ttlMillis: number) => Effect.Effect<AcquireAnswer>
  readonly renew: (key: string, owner: string, fencingToken: number, ttlMillis: number) => Effect.Effect<RenewAnswer>
  readonly release: (key: string, owner: string, fencingToken: number) => Effect.Effect<ReleaseAnswer>
  /** Frees every lease past its time and sets the alarm for the next one: the alarm handler. */
  readonly expire: Effect.Effect<void>
  readonly holder: (key: string) => Effect.Effect<Lease | undefined>
}>()("meshwork/layers/state/Locks/LockTable") {
  static readonly make = (state: DurableObjectState) => {
    const storage = state.storage
    const sql = storage.sql
    sql.exec(`CREATE TABLE IF NOT EXISTS locks (
      key TEXT PRIMARY KEY,
      token INTEGER NOT NULL,
      owner TEXT,
      expires_at INTEGER
    )`)
    const row = (key: string): LockRow | undefined =>
      sql.exec<LockRow>("SELECT token, owner, expires_at FROM locks WHERE key = ?", key).toArray()[0]
    const isHeld = (lock: LockRow | undefined, now: number): lock is LockRow & { owner: string; expires_at: number } =>
      lock !== undefined && lock.owner !== null && lock.expires_at !== null && lock.expires_at > now

    /** Points the alarm at the earliest held lease, or clears it. */
    const scheduleAlarm = Effect.promise(async () => {
      const next = sql.exec<{ next: number | null }>(
        "SELECT MIN(expires_at) AS next FROM locks WHERE owner IS NOT NULL"
      ).one().next
      if (next === null) await storage.deleteAlarm()
      else await storage.setAlarm(next)
    })

    /** One synchronous transaction, so no other call of this object interleaves with it. */
    const transaction = <A>(f: (now: number) => A) =>
      Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => storage.transactionSync(() => f(now))))
    const thenSchedule = <A>(effect: Effect.Effect<A>) => Effect.tap(effect, () => scheduleAlarm)

    return LockTable.of({
      acquire: (key, owner, ttlMillis) =>
        thenSchedule(transaction((now): AcquireAnswer => {
          checkTtl(ttlMillis)
          const lock = row(key)
          const expiresAt = now + ttlMillis
          if (isHeld(lock, now)) {
            if (lock.owner !== owner) return { _tag: "Held", expiresAt: lock.expires_at }
            // The same owner asking again (a retried call) keeps its token.
            sql.exec("UPDATE locks SET expires_at = ? WHERE key = ?", expiresAt, key)
            return { _tag: "Acquired", fencingToken: lock.token, expiresAt }
          }
          const fencingToken = (lock?.token ?? 0) + 1
          sql.exec(
            `INSERT INTO locks (key, token, owner, expires_at) VALUES (?, ?, ?, ?)
             ON CONFLICT (key) DO UPDATE SET token = excluded.token, owner = excluded.owner, expires_at = excluded.expires_at`,
            key,
            fencingToken,
            owner,
            expiresAt
          )
          return { _tag: "Acquired", fencingToken, expiresAt }
        })),
      renew: (key, owner, fencingToken, ttlMillis) =>
        thenSchedule(transaction((now): RenewAnswer => {
          checkTtl(ttlMillis)
          const lock = row(key)
          if (!isHeld(lock, now) || lock.owner !== owner || lock.token !== fencingToken) return { _tag: "Lost" }
          const expiresAt = now + ttlMillis
          sql.exec("UPDATE locks SET expires_at = ? WHERE key = ?", expiresAt, key)
          return { _tag: "Renewed", expiresAt }
        })),
      release: (key, owner, fencingToken) =>
        thenSchedule(transaction((): ReleaseAnswer => {
          const lock = row(key)
          if (lock === undefined || lock.owner !== owner || lock.token !== fencingToken) return { _tag: "NotOwner" }
          // The row stays: its token is where the next holder's token counts on from.
          sql.exec("UPDATE locks SET owner = NULL, expires_at = NULL WHERE key = ?", key)
          return { _tag: "Released" }
        })),
      expire: thenSchedule(transaction((now) => {
        sql.exec("UPDATE locks SET owner = NULL, expires_at = NULL WHERE owner IS NOT NULL AND expires_at <= ?", now)
      })),
      holder: (key) =>
        transaction((now) => {
          const lock = row(key)
          return isHeld(lock, now)
            ? { key, owner: lock.owner, fencingToken: lock.token, expiresAt: lock.expires_at }
            : undefined
        })
    })
  }

  static readonly layer = Layer.effect(LockTable, DurableObjects.State.useSync(LockTable.make))
}

/** The Durable Object keeping the locks of the keys placed on it. Export it and bind it (as LOCKS). */
export class LockObject extends DurableObjects.make({
  name: "LockObject",
  layer: LockTable.layer,
  alarm: () => LockTable.use((table) => table.expire)
}) {
  acquire(key: string, owner: string, ttlMillis: number, trace?: Telemetry.Carrier): Promise<AcquireAnswer> {
    return this.run(LockTable.use((table) => table.acquire(key, owner, ttlMillis)), { method: "acquire", trace })
  }
  renew(key: string, owner: string, fencingToken: number, ttlMillis: number, trace?: Telemetry.Carrier): Promise<RenewAnswer> {
    return this.run(LockTable.use((table) => table.renew(key, owner, fencingToken, ttlMillis)), { method: "renew", trace })
  }
  release(key: string, owner: string, fencingToken: number, trace?: Telemetry.Carrier): Promise<ReleaseAnswer> {
    return this.run(LockTable.use((table) => table.release(key, owner, fencingToken)), { method: "release", trace })
  }
  holder(key: string, trace?: Telemetry.Carrier): Promise<Lease | undefined> {
    return this.run(LockTable.use((table) => table.holder(key)), { method: "holder", trace })
  }
}

type LockStub = Pick<LockObject, "acquire" | "renew" | "release" | "holder">

export interface LockOptions {
  /** How long a lease lasts unless renewed. Default 10 seconds. */
  readonly ttl?: Duration.Input | undefined
  /** How long `withLock` waits for a held lock before failing with `LockHeld`. Default 0: it does not wait. */
  readonly wait?: Duration.Input | undefined
  /**
   * A label for who holds the lease, for diagnostics. Each acquisition also
   * gets a random id, so two callers with one label never share a lock.
   */
  readonly owner?: string | undefined
}

export const defaultTtl = Duration.seconds(10)

/** How long a waiting `withLock` sleeps between attempts at most. */
const maxPollMillis = 200

export class Locks extends Context.Service<Locks, {
  readonly acquire: (key: string, options?: LockOptions) => Effect.Effect<Lease, LockHeld | LockUnavailable>
  readonly renew: (lease: Lease, ttl?: Duration.Input) => Effect.Effect<Lease, LockLost | LockUnavailable>
  readonly release: (lease: Lease) => Effect.Effect<void, LockNotHeld | LockUnavailable>
  /** The current holder of `key`, if any. */
  readonly holder: (key: string) => Effect.Effect<Lease | undefined, LockUnavailable>
  /**
   * Runs `use` holding the lock on `key`: acquired first (waiting up to
   * `wait`), renewed every third of its ttl while `use` runs, released after.
   * If a renewal is refused, `use` is interrupted and `withLock` fails with
   * `LockLost`.
   */
  readonly withLock: <A, E, R>(
    key: string,
    use: (lease: Lease) => Effect.Effect<A, E, R>,
    options?: LockOptions
  ) => Effect.Effect<A, E | LockHeld | LockLost | LockUnavailable, R>
}>()("meshwork/layers/state/Locks") {
  static readonly make = (namespace: DurableObjectNamespace): Locks["Service"] => {
    const stub = (key: string) => Sharding.objectFor(namespace, "lock", Sharding.perKey, key) as unknown as LockStub
    const call = <A>(key: string, f: (object: LockStub, trace: Telemetry.Carrier | undefined) => Promise<A>) =>
      Effect.flatMap(Telemetry.activeCarrier, (trace) =>
        Effect.tryPromise({ try: () => f(stub(key), trace), catch: (cause) => new LockUnavailable({ key, cause }) }))
    const ttlMillis = (ttl: Duration.Input | undefined) => {
      const millis = Duration.toMillis(ttl ?? defaultTtl)
      checkTtl(millis)
      return millis
    }

    const acquire = (key: string, options?: LockOptions) => {
      const owner = `${options?.owner ?? "lock"}#${crypto.randomUUID()}`
      const ttl = ttlMillis(options?.ttl)
      return Effect.flatMap(call(key, (object, trace) => object.acquire(key, owner, ttl, trace)), (answer) =>
        answer._tag === "Acquired"
          ? Effect.succeed<Lease>({ key, owner, fencingToken: answer.fencingToken, expiresAt: answer.expiresAt })
          : Effect.flatMap(Clock.currentTimeMillis, (now) =>
            Effect.fail(new LockHeld({ key, retryAfterMillis: Math.max(0, answer.expiresAt - now) }))))
    }

    const renew = (lease: Lease, ttl?: Duration.Input) =>
      Effect.flatMap(
        call(lease.key, (object, trace) => object.renew(lease.key, lease.owner, lease.fencingToken, ttlMillis(ttl), trace)),
        (answer) =>
          answer._tag === "Renewed"
            ? Effect.succeed<Lease>({ ...lease, expiresAt: answer.expiresAt })
            : Effect.fail(new LockLost({ key: lease.key, fencingToken: lease.fencingToken }))
      )

    const release = (lease: Lease) =>
      Effect.flatMap(
        call(lease.key, (object, trace) => object.release(lease.key, lease.owner, lease.fencingToken, trace)),
        (answer) => answer._tag === "Released" ? Effect.void : Effect.fail(new LockNotHeld({ key: lease.key }))
      )

    /** Acquires, polling while the lock is held, until `waitMillis` have passed. */
    const acquireWaiting = (key: string, options: LockOptions | undefined, waitMillis: number) =>
      Effect.flatMap(Clock.currentTimeMillis, (start) => {
        const attempt: Effect.Effect<Lease, LockHeld | LockUnavailable> = Effect.catchTag(
          acquire(key, options),
          "meshwork/Locks/LockHeld",
          (held) =>
            Effect.flatMap(Clock.currentTimeMillis, (now) => {
              const left = start + waitMillis - now
              if (left <= 0) return Effect.fail(held)
              const pause = Math.min(left, maxPollMillis, Math.max(1, held.retryAfterMillis))
              return Effect.andThen(Effect.sleep(pause), attempt)
            })
        )
        return attempt
      })

    /**
     * Renews every third of the ttl, forever; fails with `LockLost` once the
     * lease cannot be kept. While the lock object is unreachable it tries
     * again more often, and it never waits (nor lets a renewal hang) past the
     * lease it has, less a margin: the work stops before its lease expires.
     */
    const keepRenewed = (first: Lease, ttl: number): Effect.Effect<never, LockLost> => {
      const margin = Math.min(Math.floor(ttl / 10), 1_000)
      const lost = (lease: Lease) => new LockLost({ key: lease.key, fencingToken: lease.fencingToken })
      const left = (lease: Lease) => Effect.map(Clock.currentTimeMillis, (now) => lease.expiresAt - margin - now)
      const loop = (lease: Lease, pause: number): Effect.Effect<never, LockLost> =>
        Effect.gen(function*() {
          const before = yield* left(lease)
          if (before <= 0) return yield* lost(lease)
          yield* Effect.sleep(Math.max(1, Math.min(pause, before)))
          const remaining = yield* left(lease)
          if (remaining <= 0) return yield* lost(lease)
          const renewed = yield* renew(lease, ttl).pipe(
            Effect.timeoutOption(remaining),
            Effect.catchTag("meshwork/Locks/LockUnavailable", () => Effect.succeedNone)
          )
          // Renewed: the next renewal in a third of the ttl. Unreachable or too slow: try again soon.
          return yield* Option.isSome(renewed) ? loop(renewed.value, Math.floor(ttl / 3)) : loop(lease, Math.floor(ttl / 10))
        })
      return loop(first, Math.floor(ttl / 3))
    }

    return Locks.of({
      acquire,
      renew,
      release,
      holder: (key) => call(key, (object, trace) => object.holder(key, trace)),
      withLock: (key, use, options) => {
        const ttl = ttlMillis(options?.ttl)
        const waitMillis = Duration.toMillis(options?.wait ?? 0)
        return Effect.acquireUseRelease(
          acquireWaiting(key, { ...options, ttl }, waitMillis),
          (lease) => Effect.raceFirst(use(lease), keepRenewed(lease, ttl)),
          (lease) =>
            release(lease).pipe(
              // An unreleased lease frees itself at its expiry; the caller's outcome stands.
              Effect.catchCause((cause) => Effect.logWarning("Lock release failed", cause)),
              Effect.annotateLogs({ lock: key })
            )
        )
      }
    })
  }

  /** Locks kept by the `LockObject` namespace bound as `binding`. */
  static readonly layer = (binding = "LOCKS") =>
    Layer.effect(Locks, Effect.map(Bindings.durableObject(binding), Locks.make))
}
