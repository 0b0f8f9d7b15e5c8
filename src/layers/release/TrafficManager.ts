/**
 * Traffic between two versions of a service (blue-green, canary), decided in
 * the router.
 *
 * A route names its versions and their bindings:
 *
 * ```toml
 * ROUTES = [
 *   { service = "users", prefix = "/api/users", binding = "USERS", versions = { blue = "USERS", green = "USERS_GREEN" } },
 * ]
 * ```
 *
 * The split lives in KV (the `MESH_CONFIG` namespace, key `traffic/<service>`):
 * `{ stable: "blue", canary: "green", weight: 20 }` sends 20% of users to
 * green. Without an entry, everything goes to the version whose binding is
 * the route's `binding`. Each isolate keeps what it read for
 * `TRAFFIC_CACHE_SECONDS` (default 10): a change reaches a router within
 * that, plus KV's own propagation (up to about 60 s at other locations; at
 * once where it was written).
 *
 * Sticky: a user's bucket is `fnv1a64("<service>:<user>") mod 10000`, and
 * buckets below `weight * 100` go to the canary. Raising the weight only adds
 * buckets, so a user on the canary at 10% is still on it at 20%, and a user
 * moves only when their bucket crosses the line. Anonymous callers hash by
 * their address. A Worker calling as itself (the gateway's checks of a
 * user's status, of an API key) always reaches the stable version: a canary
 * serves clients' requests, and a failing one cannot take the mesh's own
 * machinery down with it (an admin whose every request is checked against a
 * failing canary could not roll it back). An admin may pick a version with `x-use-version: green`;
 * answers say which version served them in `x-meshwork-version`.
 *
 * Automatic rollback: the router counts the canary's answers per isolate
 * over `windowSeconds` (tumbling windows); when at least `minRequests` were
 * seen in one isolate and the share of failures (5xx, unreachable, timed
 * out) passes `errorRate`, that isolate stops sending the canary traffic at
 * once, logs the event, and writes weight 0 with the reason (other isolates
 * follow within their cache time). A canary spread thin over many isolates
 * may never reach `minRequests` in any one: size it to your traffic.
 *
 * Outlier detection (on unless `outlierDetection: { enabled: false }`): while
 * both versions get traffic, each isolate counts each version's answers in
 * windows of `windowSeconds` (10); a version with at least `minRequests` (20)
 * answers, at least `errorRate` (0.5) of them failed, while the other
 * version failed at most half as often, is ejected: its callers go to the
 * other version for `ejectSeconds` (30; doubled each time it is ejected again
 * within 5 minutes, at most 300 s), then come back. This is how a failing
 * stable version is sidestepped while the canary is healthy: temporary, per
 * isolate, written nowhere. An ejected canary is rolled back as well (it
 * would get no more answers for its rollback to count).
 *
 * Mirroring: `mirror: { percentage: 10 }` copies 10% of the GET and HEAD
 * requests the stable version serves to the canary, after the answer (under
 * `waitUntil`; the client never waits for it). The canary's answer is
 * compared with the stable one's: the same status, and for JSON the same
 * shape (keys and value types, not values). Matches and mismatches are
 * counted in the service's RolloutObject (with the ten newest mismatches),
 * read by admins at `GET /api/admin/traffic/{service}/mirror`, and in the
 * metric `meshwork.traffic.mirrored` (only there without the ROLLOUTS binding). Mirrored answers never count toward a
 * rollback. A canary can be mirrored to at weight 0, before any user moves.
 *
 * A KV failure never fails a request: the router keeps its last split, and
 * without the `MESH_CONFIG` binding uses each route's default version.
 */
import * as Clock from "effect/Clock"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Metric from "effect/Metric"
import * as Option from "effect/Option"
import * as Schema from "effect/Schema"
import * as Bindings from "../../runtime/Bindings.ts"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"
import * as ConfigStore from "./ConfigStore.ts"
import { FaultSettings } from "../resilience/FaultInjection.ts"
import { hasRole, type Identity } from "../security/Identity.ts"
import { fnv1a64 } from "../state/Sharding.ts"

export const VersionName = Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]{0,31}$/))
export const ServiceName = Schema.String.check(Schema.isPattern(/^[a-z][a-z0-9-]{0,63}$/))

export const AutoRollback = Schema.Struct({
  /** The canary's failure share that trips a rollback. Default 0.2. */
  errorRate: Schema.optionalKey(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 }))),
  /** Fewest canary answers in the window before the rate counts. Default 20. */
  minRequests: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }))),
  /** The window, in seconds. Default 60. */
  windowSeconds: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 3600 })))
})

export const OutlierDetection = Schema.Struct({
  /** Default true. */
  enabled: Schema.optionalKey(Schema.Boolean),
  /** A version's failure share that ejects it, when the other version fails at most half as often. Default 0.5. */
  errorRate: Schema.optionalKey(Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1 }))),
  /** Fewest answers of the version in the window before its share counts. Default 20. */
  minRequests: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }))),
  /** The window, in seconds. Default 10. */
  windowSeconds: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 3600 }))),
  /** How long a first ejection lasts, in seconds; doubled for each repeat within 5 minutes, at most 300. Default 30. */
  ejectSeconds: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 300 })))
})
export type OutlierDetection = typeof OutlierDetection.Type

/** What an admin sets: a split without its rollback record (`PUT /api/admin/traffic/{service}`). */
export const SplitSettings = Schema.Struct({
  stable: VersionName,
  canary: Schema.optionalKey(VersionName),
  /** Percent of users on the canary, 0 to 100 (two decimals). */
  weight: Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 100 })),
  autoRollback: Schema.optionalKey(AutoRollback),
  outlierDetection: Schema.optionalKey(OutlierDetection),
  /** Copies of the stable version's GET and HEAD requests sent to the canary, compared, never answered with. */
  mirror: Schema.optionalKey(Schema.Struct({
    /** Percent of those requests copied, 0 to 100. */
    percentage: Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 100 }))
  })),
  /**
   * Faults injected into the calls to a version, by version name, as a
   * route's `faults` (FaultInjection.ts): only in a router whose
   * `FAULT_INJECTION` var is `true` (`npm start` sets it; deployed it is off).
   */
  faults: Schema.optionalKey(Schema.Record(VersionName, FaultSettings))
})
export type SplitSettings = typeof SplitSettings.Type

export const TrafficSplit = Schema.Struct({
  ...SplitSettings.fields,
  /** The last rollback, manual or automatic. */
  rolledBack: Schema.optionalKey(Schema.Struct({ at: Schema.String, reason: Schema.String, canary: VersionName }))
})
export type TrafficSplit = typeof TrafficSplit.Type

/** Request header an admin sends to pick a version (the gateway drops every client `x-meshwork-*` header). */
export const overrideHeader = "x-use-version"
export const versionHeader = "x-meshwork-version"

const prefix = "traffic/"
/** The caller's bucket for a service, 0 to 9999: stable for a user, spread evenly over users. */
export const bucketOf = (service: string, subject: string): number => Number(fnv1a64(`${service}:${subject}`) % 10_000n)

/** Whom a request is counted as: the user (or Worker), else the client's address. */
export const subjectOf = (identity: Identity | undefined, request: Request): string =>
  identity !== undefined && identity.kind !== "anonymous"
    ? `${identity.kind}:${identity.sub}`
    : `ip:${request.headers.get("cf-connecting-ip") ?? "unknown"}`

/** The version a bucket goes to under a split. */
export const versionFor = (split: TrafficSplit, bucket: number): string =>
  split.canary !== undefined && bucket < Math.round(split.weight * 100) ? split.canary : split.stable

/** Reading and writing splits in KV; what the admin API and the router share. An unreadable split is none. */
export const readSplit = (kv: KVNamespace, service: string) => ConfigStore.read(kv, prefix + service, TrafficSplit)
export const writeSplit = (kv: KVNamespace, service: string, split: TrafficSplit) => ConfigStore.write(kv, prefix + service, split)
/** Every split in KV, by service. */
export const readAllSplits = (kv: KVNamespace) => ConfigStore.readAll(kv, prefix, TrafficSplit)

/**
 * Weight 0 for the canary, with the reason. With `canary`, only if that is
 * still the canary with traffic: a router's late automatic rollback must not
 * undo a split an admin has changed since.
 */
export const rollback = (kv: KVNamespace, service: string, reason: string, canary?: string) =>
  Effect.gen(function*() {
    const split = yield* readSplit(kv, service)
    if (split === undefined || split.canary === undefined) return undefined
    if (canary !== undefined && (split.canary !== canary || split.weight === 0)) return undefined
    const at = new Date(yield* Clock.currentTimeMillis).toISOString()
    const next: TrafficSplit = { ...split, weight: 0, rolledBack: { at, reason, canary: split.canary } }
    yield* writeSplit(kv, service, next)
    return next
  })

/** One mirrored request: how the canary's answer compared with the stable version's. */
export const MirrorOutcome = Schema.Struct({
  path: Schema.String,
  stable: Schema.Number,
  /** The canary's status, or the problem that kept it from answering. */
  canary: Schema.Union([Schema.Number, Schema.String]),
  /** What differed; none when they matched. */
  difference: Schema.optional(Schema.String)
})
export type MirrorOutcome = typeof MirrorOutcome.Type

/** A canary's mirrored requests since it became the one mirrored to (`since`: none before the first). */
export const MirrorReport = Schema.Struct({
  canary: Schema.String,
  since: Schema.optional(Schema.String),
  matched: Schema.Number,
  mismatched: Schema.Number,
  /** The newest mismatches first, at most ten. */
  recent: Schema.Array(Schema.Struct({ ...MirrorOutcome.fields, at: Schema.String }))
})
export type MirrorReport = typeof MirrorReport.Type

/** Mirrored requests, by canary and result (`match` or `mismatch`). */
export const mirrored = Metric.counter("meshwork.traffic.mirrored", {
  description: "Requests copied to a canary and compared with the stable version's answer"
})

/** The shape of a JSON value: its type, and for objects and arrays what they hold (values left out). */
const typeOf = (value: unknown): string =>
  value === null ? "null" : Array.isArray(value) ? "array" : typeof value

/**
 * The first place where two JSON values differ in shape, as `<path>: <what>`;
 * none when their keys and value types agree (arrays by their first item).
 */
export const shapeDifference = (stable: unknown, canary: unknown, path = "$", depth = 0): string | undefined => {
  const [a, b] = [typeOf(stable), typeOf(canary)]
  if (a !== b) return `${path}: ${a} vs ${b}`
  if (depth >= 16) return undefined
  if (a === "array") {
    const [first, other] = [(stable as Array<unknown>)[0], (canary as Array<unknown>)[0]]
    return first === undefined || other === undefined ? undefined : shapeDifference(first, other, `${path}[0]`, depth + 1)
  }
  if (a !== "object") return undefined
  const [left, right] = [stable as Record<string, unknown>, canary as Record<string, unknown>]
  const missing = Object.keys(left).find((key) => !(key in right))
  if (missing !== undefined) return `${path}.${missing}: missing from the canary`
  const extra = Object.keys(right).find((key) => !(key in left))
  if (extra !== undefined) return `${path}.${extra}: only in the canary`
  for (const key of Object.keys(left)) {
    const found = shapeDifference(left[key], right[key], `${path}.${key}`, depth + 1)
    if (found !== undefined) return found
  }
  return undefined
}

/** An answer as mirroring compares it: its status, whether it is JSON, and its body (none when too large to compare). */
export interface ComparedAnswer {
  readonly status: number
  readonly json: boolean
  readonly body: string | undefined
}

/** What differs between the stable version's answer and the canary's; none when they agree. */
export const compareAnswers = (stable: ComparedAnswer, canary: ComparedAnswer): string | undefined => {
  if (stable.status !== canary.status) return `status ${stable.status} vs ${canary.status}`
  if (stable.json !== canary.json) return stable.json ? "the canary's answer is not JSON" : "only the canary's answer is JSON"
  if (!stable.json || stable.body === undefined || canary.body === undefined) return undefined
  const parse = (body: string): { readonly value: unknown } | undefined => {
    try {
      return { value: body === "" ? null : JSON.parse(body) }
    } catch {
      return undefined
    }
  }
  const [left, right] = [parse(stable.body), parse(canary.body)]
  if (left === undefined || right === undefined) return left === right ? undefined : "a body that is not valid JSON"
  return shapeDifference(left.value, right.value)
}

/** Adds one mirrored request's outcome to `report` (a new one when the canary changed). */
export const countMirrored = (
  report: MirrorReport | undefined,
  canary: string,
  outcome: MirrorOutcome,
  now: number
): MirrorReport => {
  const current: MirrorReport = report !== undefined && report.canary === canary && report.since !== undefined
    ? report
    : { canary, since: new Date(now).toISOString(), matched: 0, mismatched: 0, recent: [] }
  return outcome.difference === undefined
    ? { ...current, matched: current.matched + 1 }
    : {
      ...current,
      mismatched: current.mismatched + 1,
      recent: [{ ...outcome, at: new Date(now).toISOString() }, ...current.recent].slice(0, 10)
    }
}

/** Versions ejected by outlier detection, by service and version. */
export const ejections = Metric.counter("meshwork.traffic.ejections", {
  description: "Versions whose callers were sent to the other version for a while, their failure rate standing out"
})

interface Counts {
  readonly start: number
  total: number
  failed: number
}

/** Outlier detection in one isolate: each version's answers in the current window, and the ejection in force per service. */
export class Outliers {
  private readonly windows = new Map<string, Map<string, Counts>>()
  private readonly ejections = new Map<string, { readonly version: string; readonly until: number; readonly times: number }>()

  /** Whether `service` has, or had, an ejection: only then does a caller need the time. */
  has(service: string): boolean {
    return this.ejections.has(service)
  }

  /** The version of `service` ejected at `now`, if any. */
  ejected(service: string, now: number): string | undefined {
    const ejection = this.ejections.get(service)
    return ejection !== undefined && now < ejection.until ? ejection.version : undefined
  }

  /** Counts an answer of `version` (whose alternative is `other`); the reason, when it ejects `version`. */
  count(service: string, version: string, other: string, failed: boolean, settings: OutlierDetection, now: number): string | undefined {
    const windowMillis = (settings.windowSeconds ?? 10) * 1000
    let byVersion = this.windows.get(service)
    if (byVersion === undefined) this.windows.set(service, byVersion = new Map())
    const countsOf = (name: string) => {
      const found = byVersion.get(name)
      if (found !== undefined && now - found.start <= windowMillis) return found
      const fresh = { start: now, total: 0, failed: 0 }
      byVersion.set(name, fresh)
      return fresh
    }
    const mine = countsOf(version)
    mine.total++
    if (failed) mine.failed++
    if (this.ejected(service, now) !== undefined) return undefined
    const theirs = countsOf(other)
    const rate = mine.failed / mine.total
    if (mine.total < (settings.minRequests ?? 20) || rate < (settings.errorRate ?? 0.5)) return undefined
    // It stands out only against a version that answered, and failed at most half as often.
    if (theirs.total === 0 || theirs.failed / theirs.total > rate / 2) return undefined
    const previous = this.ejections.get(service)
    const times = previous !== undefined && previous.version === version && now - previous.until < 300_000 ? previous.times + 1 : 1
    const ejectMillis = Math.min((settings.ejectSeconds ?? 30) * 1000 * 2 ** (times - 1), 300_000)
    this.ejections.set(service, { version, until: now + ejectMillis, times })
    byVersion.delete(version)
    return `${mine.failed} of ${mine.total} answers of ${version} failed, against ${theirs.failed} of ${theirs.total} of ${other}: ` +
      `its callers go to ${other} for ${ejectMillis / 1000} s`
  }
}

/** A route's versions: name -> fetcher, and the default. */
export interface Versions {
  readonly service: string
  readonly fetchers: ReadonlyMap<string, Fetcher>
  readonly defaultVersion: string
}

/** The canary's answers in the current window. */
export interface Window {
  readonly canary: string
  readonly start: number
  total: number
  failed: number
}

type RollbackSettings = NonNullable<TrafficSplit["autoRollback"]>

/**
 * Counts `answers` of `canary` into `window` (a new one when the canary
 * changed or the window passed) and says whether the canary must be rolled
 * back: at least `minRequests` answers in the window, more than `errorRate`
 * of them failed. A rollback starts a new window.
 */
export const countAnswers = (
  window: Window | undefined,
  canary: string,
  answers: { readonly total: number; readonly failed: number },
  settings: RollbackSettings,
  now: number
): { readonly window: Window | undefined; readonly reason?: string } => {
  const windowMillis = (settings.windowSeconds ?? 60) * 1000
  const current = window === undefined || window.canary !== canary || now - window.start > windowMillis
    ? { start: now, total: 0, failed: 0, canary }
    : window
  current.total += answers.total
  current.failed += answers.failed
  if (current.total < (settings.minRequests ?? 20) || current.failed / current.total <= (settings.errorRate ?? 0.2)) {
    return { window: current }
  }
  const reason = `automatic: ${current.failed} of ${current.total} answers of ${canary} failed in ${Math.round((now - current.start) / 1000)} s`
  return { window: undefined, reason }
}

/**
 * Every router isolate's count of a service's canary answers, in one object
 * per service (bound as ROLLOUTS): a canary spread thin over many isolates
 * still reaches its threshold, and exactly one answer trips its rollback.
 * The window lives in the object's storage, so an eviction loses no count.
 */
export class RolloutObject extends DurableObjects.make({ name: "RolloutObject", layer: Layer.empty }) {
  record(canary: string, answers: { total: number; failed: number }, settings: RollbackSettings): Promise<string | undefined> {
    return this.run(DurableObjects.State.useSync((state) => {
      const kv = state.storage.kv
      const { window, reason } = countAnswers(kv.get<Window>("window"), canary, answers, settings, Date.now())
      if (window === undefined) kv.delete("window")
      else kv.put("window", window)
      return reason
    }))
  }

  /** Forgets the canary answers counted so far: an admin set the split anew (MeshAdmin). */
  restart(): Promise<void> {
    return this.run(DurableObjects.State.useSync((state) => state.storage.kv.delete("window")).pipe(Effect.asVoid))
  }

  /** Counts a mirrored request's outcome; kept in storage until another canary is mirrored to. */
  mirrored(canary: string, outcome: MirrorOutcome): Promise<void> {
    return this.run(DurableObjects.State.useSync((state) => {
      const kv = state.storage.kv
      kv.put("mirror", countMirrored(kv.get<MirrorReport>("mirror"), canary, outcome, Date.now()))
    }))
  }

  /** The mirrored requests so far, or none. */
  mirrorReport(): Promise<MirrorReport | undefined> {
    return this.run(DurableObjects.State.useSync((state) => state.storage.kv.get<MirrorReport>("mirror")))
  }
}

/**
 * Starts `service`'s count of canary answers afresh in its RolloutObject
 * (`rollouts`, the ROLLOUTS binding): a split an admin sets is judged on its
 * own answers. Best effort: a failure is logged, the split stands.
 */
export const restartCounting = (rollouts: DurableObjectNamespace, service: string) =>
  Effect.tryPromise(() =>
    (rollouts.get(rollouts.idFromName(service)) as unknown as Pick<RolloutObject, "restart">).restart()
  ).pipe(Effect.catch((error) => Effect.logWarning(`Restarting ${service}'s canary count failed`, error)))

/** A service's mirror report from its RolloutObject (in `rollouts`, the ROLLOUTS binding). */
export const readMirrorReport = (rollouts: DurableObjectNamespace, service: string) =>
  Effect.tryPromise(() =>
    (rollouts.get(rollouts.idFromName(service)) as unknown as Pick<RolloutObject, "mirrorReport">).mirrorReport()
  )

/** The methods a mirror copies: they change nothing and carry no body. */
const mirrorable = new Set(["GET", "HEAD"])

/** Where a request goes, and, when it is mirrored, the canary its copy goes to. */
export interface Chosen {
  readonly version: string
  readonly fetcher: Fetcher
  /** The split's faults for this version. */
  readonly faults?: FaultSettings | undefined
  readonly mirror?: { readonly version: string; readonly fetcher: Fetcher } | undefined
}

export class TrafficManager extends Context.Service<TrafficManager, {
  /** The version to send `request` to, and its fetcher. */
  readonly choose: (
    versions: Versions,
    identity: Identity | undefined,
    request: Request
  ) => Effect.Effect<Chosen>
  /** Counts a mirrored request's outcome, after the answer. */
  readonly recordMirrored: (versions: Versions, canary: string, outcome: MirrorOutcome) => Effect.Effect<void>
  /** Counts an answer of `version`; may trip the automatic rollback of a canary. */
  readonly record: (versions: Versions, version: string, failed: boolean) => Effect.Effect<void, never, Bindings.Invocation>
}>()("meshwork/layers/release/TrafficManager") {
  /**
   * Splits from `kv`, cached `cacheMillis` per isolate; canary answers counted
   * per isolate, or across every isolate in `rollouts` (RolloutObject) when given.
   */
  static readonly make = (
    kv: KVNamespace | undefined,
    cacheMillis: number,
    rollouts?: DurableObjectNamespace
  ): TrafficManager["Service"] => {
    const splits = ConfigStore.cached(kv, cacheMillis, TrafficSplit)
    const windows = new Map<string, Window>()
    const outliers = new Outliers()

    /** The split as this route can follow it: an unknown canary is dropped, an unknown stable version means none. */
    const usable = (versions: Versions, split: TrafficSplit | undefined): TrafficSplit | undefined => {
      if (split === undefined || !versions.fetchers.has(split.stable)) return undefined
      if (split.canary === undefined || versions.fetchers.has(split.canary)) return split
      const { canary: _, ...withoutCanary } = split
      return { ...withoutCanary, weight: 0 }
    }

    return TrafficManager.of({
      choose: (versions, identity, request) => {
        const fetcherOf = (version: string) => ({ version, fetcher: versions.fetchers.get(version)! })
        const override = request.headers.get(overrideHeader)
        if (override !== null && identity !== undefined && hasRole(identity, "admin") && versions.fetchers.has(override)) {
          return Effect.succeed(fetcherOf(override))
        }
        return Effect.flatMap(splits.get(prefix + versions.service), (found): Effect.Effect<Chosen> => {
          const split = usable(versions, found)
          if (split === undefined) return Effect.succeed(fetcherOf(versions.defaultVersion))
          if (identity?.kind === "service") return Effect.succeed(fetcherOf(split.stable))
          // A version the split injects faults into carries them (FaultInjection.ts).
          const pick = (version: string): Chosen =>
            split.faults?.[version] === undefined ? fetcherOf(version) : { ...fetcherOf(version), faults: split.faults[version] }
          const chosen = pick(versionFor(split, bucketOf(versions.service, subjectOf(identity, request))))
          const withMirror = (): Chosen => {
            const percentage = split.mirror?.percentage ?? 0
            if (
              split.canary === undefined || chosen.version !== split.stable || percentage === 0 ||
              !mirrorable.has(request.method) || Math.random() * 100 >= percentage
            ) return chosen
            return { ...chosen, mirror: fetcherOf(split.canary) }
          }
          // The time is read only for a service that has had an ejection.
          if (split.canary === undefined || !outliers.has(versions.service)) return Effect.succeed(withMirror())
          const canary = split.canary
          return Effect.map(Clock.currentTimeMillis, (now) =>
            outliers.ejected(versions.service, now) === chosen.version
              ? pick(chosen.version === split.stable ? canary : split.stable)
              : withMirror())
        })
      },
      recordMirrored: (versions, canary, outcome) =>
        Effect.andThen(
          Telemetry.record(mirrored, 1, {
            upstream: versions.service,
            canary,
            result: outcome.difference === undefined ? "match" : "mismatch"
          }),
          // Without a ROLLOUTS binding, only the metric counts them.
          rollouts === undefined
            ? Effect.void
            : Effect.tryPromise(() =>
              (rollouts.get(rollouts.idFromName(versions.service)) as unknown as Pick<RolloutObject, "mirrored">).mirrored(canary, outcome)
            ).pipe(Effect.catch((error) => Effect.logWarning(`Counting a request mirrored to ${versions.service}@${canary} failed`, error)))
        ),
      record: (versions, version, failed) => {
        const split = usable(versions, splits.peek(prefix + versions.service))
        // Only while both versions have traffic, and only theirs (not a version an admin picked).
        if (split === undefined || split.canary === undefined || split.weight === 0) return Effect.void
        if (version !== split.stable && version !== split.canary) return Effect.void
        const canary = split.canary
        // Rolls the canary back at once in this isolate; KV tells the others, after the answer.
        const trip = (reason: string, now: number) =>
          Effect.gen(function*() {
            splits.put(
              prefix + versions.service,
              { ...split, weight: 0, rolledBack: { at: new Date(now).toISOString(), reason, canary } },
              now
            )
            yield* Effect.logWarning(`Rolling ${versions.service} back from ${canary}`).pipe(
              Effect.annotateLogs({ service: versions.service, canary, reason })
            )
            if (kv !== undefined) {
              yield* rollback(kv, versions.service, reason, canary).pipe(
                Effect.catchTag("meshwork/ConfigStore/ConfigStoreError", (error) =>
                  Effect.logError(`Writing the rollback of ${versions.service} failed`, error.cause))
              )
            }
          })
        const detection = split.outlierDetection ?? {}
        const other = version === split.stable ? canary : split.stable
        const outlier = detection.enabled === false ? Effect.void : Effect.flatMap(Clock.currentTimeMillis, (now) => {
          const reason = outliers.count(versions.service, version, other, failed, detection, now)
          if (reason === undefined) return Effect.void
          return Effect.andThen(
            Telemetry.record(ejections, 1, { upstream: versions.service, version }),
            Effect.andThen(
              Effect.logWarning(`Ejecting ${versions.service}@${version} for a while`).pipe(
                Effect.annotateLogs({ service: versions.service, version, reason })
              ),
              // An ejected canary would answer nothing more for its rollback to count: it is rolled back.
              version === canary
                ? Bindings.waitUntil(trip(`automatic: outlier, ${reason}`, now))
                : Effect.void
            )
          )
        })
        // Only the canary's answers count toward its rollback.
        if (canary !== version) return outlier
        const settings = split.autoRollback ?? {}
        if (rollouts !== undefined) {
          // Counted across isolates, after the answer: the object decides, once.
          return Effect.andThen(outlier, Bindings.waitUntil(Effect.gen(function*() {
            const object = rollouts.get(rollouts.idFromName(versions.service)) as unknown as Pick<RolloutObject, "record">
            const reason = yield* Effect.tryPromise(() => object.record(version, { total: 1, failed: failed ? 1 : 0 }, settings)).pipe(
              Effect.catch((error) => Effect.as(Effect.logWarning(`Counting ${versions.service}'s canary answer failed`, error), undefined))
            )
            if (reason !== undefined) yield* trip(reason, yield* Clock.currentTimeMillis)
          })))
        }
        return Effect.andThen(outlier, Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const { window, reason } = countAnswers(windows.get(versions.service), version, { total: 1, failed: failed ? 1 : 0 }, settings, now)
          if (window === undefined) windows.delete(versions.service)
          else windows.set(versions.service, window)
          if (reason !== undefined) yield* Bindings.waitUntil(trip(reason, now))
        }))
      }
    })
  }

  /**
   * Splits from the `MESH_CONFIG` KV namespace, kept `TRAFFIC_CACHE_SECONDS`
   * (default 10) per isolate. Without the binding, every route uses its
   * default version (and a warning says so).
   */
  static readonly layer = Layer.effect(
    TrafficManager,
    Effect.gen(function*() {
      const { kv, cacheMillis } = yield* ConfigStore.fromEnv("TRAFFIC_CACHE_SECONDS", "every route uses its default version")
      // With a ROLLOUTS binding, canary answers are counted across every isolate.
      const rollouts = yield* Effect.option(Bindings.durableObject("ROLLOUTS"))
      return TrafficManager.make(kv, cacheMillis, Option.getOrUndefined(rollouts))
    })
  )
}

/** The traffic manager, when the Worker's layer has one. */
export const trafficManager = Effect.map(Effect.serviceOption(TrafficManager), Option.getOrUndefined)
