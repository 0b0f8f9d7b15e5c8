/**
 * The admin API's audit trail: every change an admin makes through it (a
 * request other than GET or HEAD that succeeded) is recorded in the
 * `MESH_CONFIG` KV namespace: who (the admin's user id), what (method, path,
 * body), when, and the answer's status.
 *
 * One key per entry, `audit/<inverted time>-<random>`, so that KV's
 * lexicographic listing is newest first. Each entry is kept in the key's
 * metadata (the body cut to `maxBodyChars`), so reading the trail is one
 * `list`, and in full in its value. The trail is bounded twice: after each
 * write, entries past the newest `maxEntries` are deleted, and every entry
 * expires after `retentionSeconds` whatever happens (KV's listing is
 * eventually consistent across locations, so the count may briefly exceed
 * the bound there).
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"
import { readLimited } from "../../runtime/Http.ts"
import type { Identity } from "../security/Identity.ts"
import { ConfigStoreError } from "./ConfigStore.ts"

export const prefix = "audit/"

/** How many entries the trail keeps. */
export const maxEntries = 200

/** How long an entry is kept at most: 90 days. */
export const retentionSeconds = 90 * 24 * 60 * 60

/** How much of a request's body an entry's listing shows (its value keeps the whole body). */
export const maxBodyChars = 512

/** The largest body read into an entry: the admin API reads no more (MeshAdmin.maxBodyBytes). */
const maxBodyBytes = 128 * 1024

export const AuditEntry = Schema.Struct({
  /** ISO 8601 time of the change. */
  at: Schema.String,
  /** The admin's user id (`sub` of their identity). */
  by: Schema.String,
  method: Schema.String,
  path: Schema.String,
  status: Schema.Number,
  /** The request's body as sent (JSON text), cut to `maxBodyChars` in a listing; absent when it had none. */
  body: Schema.optionalKey(Schema.String),
  /** Whether `body` was cut. */
  truncated: Schema.optionalKey(Schema.Boolean)
})
export type AuditEntry = typeof AuditEntry.Type

const decodeEntry = Schema.decodeUnknownOption(AuditEntry)

/** Sorts newest first: 13 digits of milliseconds, inverted. */
const keyFor = (millis: number) =>
  `${prefix}${String(9_999_999_999_999 - millis).padStart(13, "0")}-${crypto.randomUUID().slice(0, 8)}`

const mutating = (method: string) => method !== "GET" && method !== "HEAD"

const whoIs = (identity: Identity) => identity.kind === "anonymous" ? "anonymous" : identity.sub

// A KV failure is the configuration store's (the admin API answers it 503).
const kvCall = <A>(f: () => Promise<A>) => Effect.tryPromise({ try: f, catch: (cause) => new ConfigStoreError({ cause }) })

/** Writes one entry and trims the trail to `maxEntries`. */
export const record = (kv: KVNamespace, entry: AuditEntry, millis: number) =>
  Effect.gen(function*() {
    const body = entry.body
    const listed: AuditEntry = body !== undefined && body.length > maxBodyChars
      ? { ...entry, body: body.slice(0, maxBodyChars), truncated: true }
      : entry
    yield* kvCall(() =>
      kv.put(keyFor(millis), JSON.stringify(entry), { metadata: listed, expirationTtl: retentionSeconds }))
    const keys = yield* kvCall(() => kv.list({ prefix, limit: 1000 }))
    const stale = keys.keys.slice(maxEntries)
    if (stale.length > 0) yield* Effect.forEach(stale, ({ name }) => kvCall(() => kv.delete(name)), { concurrency: 10, discard: true })
  })

/** The newest `limit` entries (at most `maxEntries`), newest first, from their metadata: one KV list. */
export const read = (kv: KVNamespace, limit: number = 50) =>
  Effect.map(
    kvCall(() => kv.list({ prefix, limit: Math.max(1, Math.min(limit, maxEntries)) })),
    (listed) => listed.keys.flatMap((key) => {
      const entry = decodeEntry(key.metadata)
      return entry._tag === "Some" ? [entry.value] : []
    })
  )

/**
 * `answer` (the admin API's answer to `request`), with the change recorded
 * when it is one: a method other than GET or HEAD, answered 2xx. The body is
 * read from a copy of the request made before `answer` runs, after it
 * succeeded (so it was within the admin API's limits). A failure to record
 * is logged as an error and does not change the answer: the change was made.
 */
export const audited = <E, R>(request: Request, identity: Identity, answer: Effect.Effect<Response, E, R>) =>
  Effect.suspend(() => {
    if (!mutating(request.method)) return answer
    const copy = request.body === null ? undefined : request.clone()
    return Effect.flatMap(answer, (response) => {
      if (!response.ok) {
        return copy?.body ? Effect.as(Effect.promise(() => copy.body!.cancel()), response) : Effect.succeed(response)
      }
      return Effect.gen(function*() {
        const bytes = copy?.body ? yield* readLimited(copy.body, maxBodyBytes) : undefined
        const body = bytes === undefined || bytes.byteLength === 0 ? undefined : new TextDecoder().decode(bytes)
        const millis = yield* Clock.currentTimeMillis
        const kv = yield* Bindings.kv("MESH_CONFIG")
        yield* record(kv, {
          at: new Date(millis).toISOString(),
          by: whoIs(identity),
          method: request.method,
          path: new URL(request.url).pathname,
          status: response.status,
          ...(body === undefined ? {} : { body })
        }, millis)
      }).pipe(
        Effect.catchCause((cause) => Effect.logError(`Could not record ${request.method} ${new URL(request.url).pathname} in the audit trail`, cause)),
        Effect.as(response)
      )
    })
  })
