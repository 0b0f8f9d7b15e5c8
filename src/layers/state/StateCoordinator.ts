/**
 * Keyed state kept by a Durable Object, with Schema-typed atomic changes and
 * optimistic concurrency.
 *
 * ```ts
 * const Carts = StateCoordinator.define({
 *   name: "cart",
 *   state: Cart,                 // a Schema
 *   change: CartChange,          // a Schema (usually a tagged union)
 *   initial: { items: {} },
 *   apply: (cart, change) => Result.succeed(...)   // pure; Result.fail(reason) refuses it
 * })
 * export class CartObject extends Carts.StateObject {}   // bind it, e.g. as CARTS
 * const carts = Carts.client(env.CARTS)
 * yield* carts.update(cartId, userId, [{ _tag: "AddItem", ... }], { ifMatch: [3] })
 * ```
 *
 * Every entry has an owner and a version. Each write (create, update,
 * replace, remove) is one synchronous SQLite transaction that checks the
 * owner and the expected version, applies the changes in order and bumps the
 * version once; a refused change leaves the entry untouched. A caller that
 * is not the owner sees `StateNotFound`, as if the key did not exist.
 *
 * Why no lock inside one object: an object runs one event at a time, and its
 * input gate holds further events while the current one awaits storage, and
 * its output gate holds replies until its writes are durable. A change read,
 * computed and written without awaiting anything else is therefore atomic,
 * even under a thousand concurrent callers. A lock (src/layers/state/Locks.ts) is
 * needed when a read-modify-write spans something the gates do not cover: a
 * `fetch` to another service, a D1 query, or several objects. Then the
 * object's state can change between the read and the write, and the write
 * must be guarded (a lock with a fencing token, or the `ifMatch` version
 * check here, which turns a lost race into a 412 for the caller to retry).
 *
 * Entries whose `idleTtl` has passed since their last write are gone (reads
 * and writes no longer see them) and are deleted by the object's alarm; only
 * writes keep an entry alive. Deleted entries keep their version as a tombstone, so
 * a key created again never repeats an ETag a client may still hold.
 *
 * Reads write nothing: the object's table is created by its first write, so a
 * `get` (or a refused `update`/`replace`/`remove`) of a key never written leaves
 * the object without storage, and Cloudflare keeps no object without storage.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Result from "effect/Result"
import * as Schema from "effect/Schema"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import * as Sharding from "./Sharding.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"

export interface Definition<S, C> {
  /** Names the objects (`<name>/<key>`) and appears in errors. */
  readonly name: string
  readonly state: Schema.Codec<S, unknown>
  readonly change: Schema.Codec<C, unknown>
  /** The state of a new entry when `create` is given none. */
  readonly initial: S
  /** One change, applied to the current state. Pure; `Result.fail(reason)` refuses it. */
  readonly apply: (state: S, change: C) => Result.Result<S, string>
  /** Largest encoded state, in bytes. Default 128 KiB. */
  readonly maxBytes?: number | undefined
  /** Entries not written for this long are deleted. Default: kept until removed. */
  readonly idleTtl?: Duration.Input | undefined
}

/** A stored entry: its state and version (the ETag is `"<version>"`). */
export interface Entry<S> {
  readonly key: string
  readonly version: number
  readonly state: S
}

/** Which versions a write accepts: any existing one (`If-Match: *`), or one of a list. */
export type Precondition = "*" | ReadonlyArray<number>

/** The strong ETag of a version. */
export const etag = (version: number): string => `"${version}"`

const entityTag = /\s*(W\/)?"([\x21\x23-\x7e\x80-\xff]*)"\s*(?:,|$)/y

/**
 * The versions an `If-Match` header accepts (RFC 9110): `*`, or the strong
 * ETags it lists (weak ones never match a write). `undefined` when there is
 * no header; a `SyntaxError` when it does not parse.
 */
export const parseIfMatch = (header: string | undefined): Precondition | undefined => {
  if (header === undefined) return undefined
  if (header.trim() === "*") return "*"
  if (header.trim() === "") throw new SyntaxError("If-Match is empty")
  const versions: Array<number> = []
  entityTag.lastIndex = 0
  while (entityTag.lastIndex < header.length) {
    const start = entityTag.lastIndex
    const match = entityTag.exec(header)
    if (match === null) {
      // Empty list elements (", ,") are allowed; anything else is not an entity tag.
      const rest = header.slice(start)
      const empty = /^\s*,/.exec(rest)
      if (empty === null) throw new SyntaxError(`If-Match is not "*" or a list of entity tags: ${header}`)
      entityTag.lastIndex = start + empty[0].length
      continue
    }
    const version = Number(match[2])
    if (match[1] === undefined && /^[1-9][0-9]{0,15}$/.test(match[2]!)) versions.push(version)
  }
  return versions
}

export class StateNotFound extends Schema.TaggedError<StateNotFound>()("meshwork/StateCoordinator/StateNotFound", {
  key: Schema.String
}) {}

export class StateExists extends Schema.TaggedError<StateExists>()("meshwork/StateCoordinator/StateExists", {
  key: Schema.String
}) {}

/** The entry is at `currentVersion`, which the write's precondition does not accept. */
export class VersionMismatch extends Schema.TaggedError<VersionMismatch>()("meshwork/StateCoordinator/VersionMismatch", {
  key: Schema.String,
  currentVersion: Schema.Number
}) {}

/** A change (or a replacement state) the definition refuses, or a state over its size limit. */
export class InvalidChange extends Schema.TaggedError<InvalidChange>()("meshwork/StateCoordinator/InvalidChange", {
  key: Schema.String,
  reason: Schema.String
}) {}

/** The object could not be reached or failed. */
export class StateUnavailable extends Schema.TaggedError<StateUnavailable>()("meshwork/StateCoordinator/StateUnavailable", {
  key: Schema.String,
  cause: Schema.Defect()
}) {}

// What the object answers over RPC: plain data with encoded states, turned into typed results by the client.
export type Answer =
  | { readonly _tag: "Ok"; readonly version: number; readonly state: unknown }
  | { readonly _tag: "Removed" }
  | { readonly _tag: "NotFound" }
  | { readonly _tag: "Exists" }
  | { readonly _tag: "Mismatch"; readonly currentVersion: number }
  | { readonly _tag: "Invalid"; readonly reason: string }

interface Row {
  readonly owner: string
  readonly version: number
  readonly value: string | null
  readonly expires_at: number | null
  readonly [column: string]: SqlStorageValue
}

/** The entries of one object, over its SQLite storage (`makeTable`). Time is Effect's `Clock`, so tests drive expiry with `TestClock`. */
export interface Table {
  readonly create: (key: string, owner: string, state: unknown) => Effect.Effect<Answer>
  readonly get: (key: string, owner: string) => Effect.Effect<Answer>
  readonly update: (key: string, owner: string, changes: unknown, expected: Precondition | undefined) => Effect.Effect<Answer>
  readonly replace: (key: string, owner: string, state: unknown, expected: Precondition) => Effect.Effect<Answer>
  readonly remove: (key: string, owner: string, expected: Precondition | undefined) => Effect.Effect<Answer>
  /** Deletes idle entries and sets the alarm for the next: the alarm handler. */
  readonly expire: Effect.Effect<void>
  /** What the object stores; reads nothing but the schema and a count. */
  readonly stats: Effect.Effect<StorageStats>
}

/** What one object stores: its tables, its rows (tombstones included) and its database's size. */
export interface StorageStats {
  readonly tables: number
  readonly rows: number
  readonly bytes: number
}

const defaultMaxBytes = 128 * 1024
const encoder = new TextEncoder()

const schema = `CREATE TABLE IF NOT EXISTS entries (
  key TEXT PRIMARY KEY,
  owner TEXT NOT NULL,
  version INTEGER NOT NULL,
  value TEXT,
  expires_at INTEGER
)`

/**
 * The table is created by the first write, not when the object starts: a
 * read (or a refused write) of a key that was never written leaves the
 * object without storage, and an object without storage is not kept.
 */
export const makeTable = <S, C>(definition: Definition<S, C>, state: DurableObjectState): Table => {
  const storage = state.storage
  const sql = storage.sql
  const tableExists = () =>
    sql.exec("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'entries'").toArray().length > 0
  let created = tableExists()
  const createTable = () => {
    if (created) return
    sql.exec(schema)
    created = true
  }
  const maxBytes = definition.maxBytes ?? defaultMaxBytes
  const idleMillis = definition.idleTtl === undefined ? undefined : Duration.toMillis(definition.idleTtl)
  const decodeState = Schema.decodeUnknownExit(definition.state)
  const encodeState = Schema.encodeUnknownExit(definition.state)
  const decodeChanges = Schema.decodeUnknownExit(Schema.Array(definition.change))

  const row = (key: string): Row | undefined =>
    created ? sql.exec<Row>("SELECT owner, version, value, expires_at FROM entries WHERE key = ?", key).toArray()[0] : undefined
  /** Whether the row holds an entry now: not removed, and not idle past its expiry (the alarm may not have run yet). */
  const isLive = (entry: Row | undefined, now: number): boolean =>
    entry !== undefined && entry.value !== null && (entry.expires_at === null || entry.expires_at > now)

  /** The live entry of `owner`, or why there is none to write. */
  const live = (key: string, owner: string, expected: Precondition | undefined, now: number): Answer | Row => {
    const entry = row(key)
    if (entry === undefined || !isLive(entry, now) || entry.owner !== owner) {
      // RFC 9110: a precondition on something that does not exist (for this caller) is false.
      return expected === undefined ? { _tag: "NotFound" } : { _tag: "Mismatch", currentVersion: 0 }
    }
    if (expected !== undefined && expected !== "*" && !expected.includes(entry.version)) {
      return { _tag: "Mismatch", currentVersion: entry.version }
    }
    return entry
  }
  const isAnswer = (value: Answer | Row): value is Answer => "_tag" in value

  /** Encodes and stores `next` at `version`, unless it is over the size limit. */
  const write = (key: string, owner: string, version: number, next: S, now: number): Answer => {
    const encoded = encodeState(next)
    if (encoded._tag === "Failure") return { _tag: "Invalid", reason: "The state cannot be encoded" }
    const value = JSON.stringify(encoded.value)
    if (encoder.encode(value).byteLength > maxBytes) {
      return { _tag: "Invalid", reason: `The ${definition.name} would exceed ${maxBytes} bytes` }
    }
    createTable()
    sql.exec(
      `INSERT INTO entries (key, owner, version, value, expires_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, version = excluded.version,
         value = excluded.value, expires_at = excluded.expires_at`,
      key,
      owner,
      version,
      value,
      idleMillis === undefined ? null : now + idleMillis
    )
    return { _tag: "Ok", version, state: encoded.value }
  }

  const stored = (entry: Row): S => {
    const decoded = decodeState(JSON.parse(entry.value!))
    // Stored states were encoded by this definition; one that no longer decodes is a bug, not a caller error.
    if (decoded._tag === "Failure") throw new Error(`A stored ${definition.name} no longer decodes`, { cause: decoded.cause })
    return decoded.value
  }

  const scheduleAlarm = idleMillis === undefined
    ? Effect.void
    : Effect.promise(async () => {
      if (!created) return
      const next = sql.exec<{ next: number | null }>("SELECT MIN(expires_at) AS next FROM entries WHERE value IS NOT NULL")
        .one().next
      if (next === null) await storage.deleteAlarm()
      else await storage.setAlarm(next)
    })

  /**
   * One synchronous transaction: no other event of this object interleaves
   * with it. Before the first write there is nothing to read or change, and no
   * transaction is opened: `f` answers without touching storage, or creates the
   * table and inserts the first row (writes within one event commit together).
   */
  const transaction = (f: (now: number) => Answer) =>
    Effect.flatMap(Clock.currentTimeMillis, (now) =>
      Effect.sync(() => {
        if (!created) return f(now)
        return storage.transactionSync(() => f(now))
      }))
  const writing = (f: (now: number) => Answer) =>
    Effect.tap(transaction(f), (answer) => answer._tag === "Ok" || answer._tag === "Removed" ? scheduleAlarm : Effect.void)

  return {
    create: (key, owner, encoded) =>
      writing((now) => {
        const entry = row(key)
        if (isLive(entry, now)) return { _tag: "Exists" }
        let initial = definition.initial
        if (encoded !== undefined) {
          const decoded = decodeState(encoded)
          if (decoded._tag === "Failure") return { _tag: "Invalid", reason: String(decoded.cause) }
          initial = decoded.value
        }
        return write(key, owner, (entry?.version ?? 0) + 1, initial, now)
      }),
    get: (key, owner) =>
      transaction((now) => {
        const entry = live(key, owner, undefined, now)
        return isAnswer(entry) ? entry : { _tag: "Ok", version: entry.version, state: JSON.parse(entry.value!) }
      }),
    update: (key, owner, encoded, expected) =>
      writing((now) => {
        const entry = live(key, owner, expected, now)
        if (isAnswer(entry)) return entry
        const changes = decodeChanges(encoded)
        if (changes._tag === "Failure") return { _tag: "Invalid", reason: String(changes.cause) }
        let next = stored(entry)
        for (const change of changes.value) {
          const applied = definition.apply(next, change)
          if (Result.isFailure(applied)) return { _tag: "Invalid", reason: applied.failure }
          next = applied.success
        }
        return write(key, owner, entry.version + 1, next, now)
      }),
    replace: (key, owner, encoded, expected) =>
      writing((now) => {
        const entry = live(key, owner, expected, now)
        if (isAnswer(entry)) return entry
        const decoded = decodeState(encoded)
        if (decoded._tag === "Failure") return { _tag: "Invalid", reason: String(decoded.cause) }
        return write(key, owner, entry.version + 1, decoded.value, now)
      }),
    remove: (key, owner, expected) =>
      writing((now) => {
        const entry = live(key, owner, expected, now)
        if (isAnswer(entry)) return entry
        // The version stays behind, so a later entry under this key counts on from it.
        sql.exec("UPDATE entries SET value = NULL, expires_at = NULL, version = version + 1 WHERE key = ?", key)
        return { _tag: "Removed" }
      }),
    stats: Effect.sync(() => ({
      tables: sql.exec<{ n: number }>(
        "SELECT count(*) AS n FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' AND name NOT LIKE '\\_cf\\_%' ESCAPE '\\'"
      ).one().n,
      rows: created ? sql.exec<{ n: number }>("SELECT count(*) AS n FROM entries").one().n : 0,
      bytes: sql.databaseSize
    })),
    expire: Effect.andThen(
      transaction((now) => {
        if (!created) return { _tag: "Removed" }
        sql.exec(
          "UPDATE entries SET value = NULL, expires_at = NULL, version = version + 1 WHERE value IS NOT NULL AND expires_at <= ?",
          now
        )
        return { _tag: "Removed" }
      }),
      scheduleAlarm
    )
  }
}

export interface WriteOptions {
  /** The versions this write accepts (a request's `If-Match`). Default: any. */
  readonly ifMatch?: Precondition | undefined
}

/** Typed access to the entries of one definition's objects. */
export interface Client<S, C> {
  readonly create: (key: string, owner: string, state?: S) => Effect.Effect<Entry<S>, StateExists | InvalidChange | StateUnavailable>
  readonly get: (key: string, owner: string) => Effect.Effect<Entry<S>, StateNotFound | StateUnavailable>
  readonly update: (
    key: string,
    owner: string,
    changes: ReadonlyArray<C>,
    options?: WriteOptions
  ) => Effect.Effect<Entry<S>, StateNotFound | VersionMismatch | InvalidChange | StateUnavailable>
  /** Replaces the whole state; the caller must say which version it replaces. */
  readonly replace: (
    key: string,
    owner: string,
    state: S,
    ifMatch: Precondition
  ) => Effect.Effect<Entry<S>, StateNotFound | VersionMismatch | InvalidChange | StateUnavailable>
  readonly remove: (key: string, owner: string, options?: WriteOptions) => Effect.Effect<void, StateNotFound | VersionMismatch | StateUnavailable>
}

type ObjectStub = {
  readonly [Method in Exclude<keyof Table, "expire" | "stats">]: (
    ...args: [...Parameters<Table[Method]>, trace: Telemetry.Carrier | undefined]
  ) => Promise<Answer>
}

/**
 * A definition's Durable Object class and its client. Export a subclass of
 * `StateObject` from the Worker and bind it; each key gets its own object.
 */
export const define = <S, C>(definition: Definition<S, C>) => {
  class TableService extends Context.Service<TableService, Table>()(`meshwork/layers/StateCoordinator/${definition.name}`) {}

  const use = <A>(f: (table: Table) => Effect.Effect<A>) => TableService.use(f)

  class StateObject extends DurableObjects.make({
    name: definition.name,
    layer: Layer.effect(TableService, DurableObjects.State.useSync((state) => makeTable(definition, state))),
    alarm: () => use((table) => table.expire)
  }) {
    create(key: string, owner: string, state: unknown, trace?: Telemetry.Carrier): Promise<Answer> {
      return this.run(use((table) => table.create(key, owner, state)), { method: "create", trace })
    }
    get(key: string, owner: string, trace?: Telemetry.Carrier): Promise<Answer> {
      return this.run(use((table) => table.get(key, owner)), { method: "get", trace })
    }
    update(key: string, owner: string, changes: unknown, expected: Precondition | undefined, trace?: Telemetry.Carrier): Promise<Answer> {
      return this.run(use((table) => table.update(key, owner, changes, expected)), { method: "update", trace })
    }
    replace(key: string, owner: string, state: unknown, expected: Precondition, trace?: Telemetry.Carrier): Promise<Answer> {
      return this.run(use((table) => table.replace(key, owner, state, expected)), { method: "replace", trace })
    }
    remove(key: string, owner: string, expected: Precondition | undefined, trace?: Telemetry.Carrier): Promise<Answer> {
      return this.run(use((table) => table.remove(key, owner, expected)), { method: "remove", trace })
    }
    /** What this object stores (a diagnostic: reads only, never creates storage). */
    stats(): Promise<StorageStats> {
      return this.run(use((table) => table.stats))
    }
  }

  const decodeState = Schema.decodeUnknownEffect(definition.state)
  const encodeState = Schema.encodeEffect(definition.state)
  const encodeChanges = Schema.encodeEffect(Schema.Array(definition.change))

  const client = (namespace: DurableObjectNamespace): Client<S, C> => {
    const call = (key: string, f: (object: ObjectStub, trace: Telemetry.Carrier | undefined) => Promise<Answer>) =>
      Effect.flatMap(Telemetry.activeCarrier, (trace) =>
        Effect.tryPromise({
          try: () => f(Sharding.objectFor(namespace, definition.name, Sharding.perKey, key) as unknown as ObjectStub, trace),
          catch: (cause) => new StateUnavailable({ key, cause })
        }))
    const unavailable = (key: string) => (cause: unknown) => new StateUnavailable({ key, cause })
    type Failure = StateNotFound | StateExists | VersionMismatch | InvalidChange | StateUnavailable
    const entry = (key: string, answer: Answer): Effect.Effect<Entry<S>, Failure> => {
      switch (answer._tag) {
        case "Ok":
          return decodeState(answer.state).pipe(
            Effect.map((state) => ({ key, version: answer.version, state })),
            Effect.mapError(unavailable(key))
          )
        case "NotFound":
        case "Removed":
          return Effect.fail(new StateNotFound({ key }))
        case "Exists":
          return Effect.fail(new StateExists({ key }))
        case "Mismatch":
          return Effect.fail(new VersionMismatch({ key, currentVersion: answer.currentVersion }))
        case "Invalid":
          return Effect.fail(new InvalidChange({ key, reason: answer.reason }))
      }
    }
    // Each method fails only with its own subset of `Failure`; the casts narrow the shared decoder's union.
    return {
      create: (key, owner, state) =>
        Effect.flatMap(
          state === undefined ? Effect.succeed(undefined) : Effect.mapError(encodeState(state), unavailable(key)),
          (encoded) => Effect.flatMap(call(key, (object, trace) => object.create(key, owner, encoded, trace)), (answer) => entry(key, answer))
        ) as Effect.Effect<Entry<S>, StateExists | InvalidChange | StateUnavailable>,
      get: (key, owner) =>
        Effect.flatMap(call(key, (object, trace) => object.get(key, owner, trace)), (answer) => entry(key, answer)) as Effect.Effect<
          Entry<S>,
          StateNotFound | StateUnavailable
        >,
      update: (key, owner, changes, options) =>
        Effect.flatMap(
          Effect.mapError(encodeChanges(changes), unavailable(key)),
          (encoded) =>
            Effect.flatMap(
              call(key, (object, trace) => object.update(key, owner, encoded, options?.ifMatch, trace)),
              (answer) => entry(key, answer)
            )
        ) as Effect.Effect<Entry<S>, StateNotFound | VersionMismatch | InvalidChange | StateUnavailable>,
      replace: (key, owner, state, ifMatch) =>
        Effect.flatMap(
          Effect.mapError(encodeState(state), unavailable(key)),
          (encoded) =>
            Effect.flatMap(call(key, (object, trace) => object.replace(key, owner, encoded, ifMatch, trace)), (answer) => entry(key, answer))
        ) as Effect.Effect<Entry<S>, StateNotFound | VersionMismatch | InvalidChange | StateUnavailable>,
      remove: (key, owner, options) =>
        Effect.flatMap(
          call(key, (object, trace) => object.remove(key, owner, options?.ifMatch, trace)),
          (answer) => answer._tag === "Removed" ? Effect.void : Effect.asVoid(entry(key, answer))
        ) as Effect.Effect<void, StateNotFound | VersionMismatch | StateUnavailable>
    }
  }

  return { definition, StateObject, client }
}
