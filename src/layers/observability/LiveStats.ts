/**
 * Live figures of the mesh, aggregated across isolates: what the console's
 * live panels show (docs/console.md).
 *
 * A proxy Worker (the gateway, the router) with `LiveStats.layer` and a
 * `MESH_STATS` binding (MeshStatsObject) counts, in each isolate:
 * - every call it forwards, by upstream and version (`users@green`): calls,
 *   failures (5xx, unreachable, timed out, refused by a breaker or a
 *   bulkhead) and latency in fixed buckets;
 * - its policies' decisions: retries and retry-budget refusals per
 *   upstream, bulkhead sheds, rate-limit rejections per policy, edge-cache
 *   results;
 * - circuit breaker transitions.
 *
 * Recording is a few additions to plain numbers in the isolate. At most
 * every `LIVE_STATS_INTERVAL_SECONDS` (default 10), the first request after
 * the interval hands what was counted since to the Worker's own
 * MeshStatsObject (one per Worker, named after it) in one RPC under
 * `waitUntil`; a report that fails to arrive is kept and sent with the next
 * one, so nothing counted is lost while the isolate lives (but for a report
 * that never settles, given up on after 30 s; bounded: at most
 * `maxSeries` series and `maxCounters` counters per report, the rest added
 * up under `(other)`). The object adds reports into 10 s windows kept for
 * 15 minutes, in memory and in its storage, so an eviction loses nothing.
 *
 * Cost: the object gets one RPC per isolate per interval, whatever the
 * traffic. An isolate that gets no more requests keeps its last few seconds
 * of counts until it is evicted.
 *
 * This module is what counts (every proxy and policy layer imports it); the
 * object and the admin API's report are in MeshStats.ts, so a Worker that
 * only counts does not bundle them.
 */
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Bindings from "../../runtime/Bindings.ts"
import * as Telemetry from "../../runtime/Telemetry.ts"

/** Upper bounds of the latency buckets, in ms; one more bucket holds everything slower. */
export const latencyBounds: ReadonlyArray<number> = [1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 75, 100, 150, 200, 300, 500, 750, 1000, 2000, 5000, 10000]

/** Most series (upstream@version) and counters a report or a window holds; the rest are added up as `(other)`. */
export const maxSeries = 100
export const maxCounters = 200
/** Breaker transitions an isolate keeps between reports, and the object keeps in all. */
export const maxTransitions = 50
export const other = "(other)"

/** Calls to one upstream version: how many, how many failed, and their latencies by bucket. */
export interface Calls {
  n: number
  errors: number
  /** Counts per bucket of `latencyBounds` (one more at the end for slower calls). */
  latency: Array<number>
}

export interface BreakerTransition {
  readonly upstream: string
  readonly from: string
  readonly to: string
  /** Epoch ms. */
  readonly at: number
}

/** What an isolate counted between two reports, or what a window holds. */
export interface Figures {
  readonly calls: Record<string, Calls>
  /** `<name>|<label>`: `retries|users@green`, `ratelimit.rejected|api`, `cache|HIT`. */
  readonly counters: Record<string, number>
  readonly transitions: Array<BreakerTransition>
}

export const emptyFigures = (): Figures => ({ calls: {}, counters: {}, transitions: [] })

const isEmpty = (figures: Figures) =>
  figures.transitions.length === 0 && Object.keys(figures.calls).length === 0 && Object.keys(figures.counters).length === 0

const bucketOf = (ms: number): number => {
  let bucket = 0
  while (bucket < latencyBounds.length && ms > latencyBounds[bucket]!) bucket++
  return bucket
}

const callsOf = (figures: Figures, series: string): Calls => {
  const known = figures.calls[series]
  if (known !== undefined) return known
  const key = Object.keys(figures.calls).length < maxSeries || series === other ? series : other
  return (figures.calls[key] ??= { n: 0, errors: 0, latency: new Array(latencyBounds.length + 1).fill(0) })
}

const addCount = (figures: Figures, key: string, n: number) => {
  if (figures.counters[key] !== undefined || Object.keys(figures.counters).length < maxCounters) {
    figures.counters[key] = (figures.counters[key] ?? 0) + n
  } else {
    const otherKey = `${key.split("|", 1)[0]}|${other}`
    figures.counters[otherKey] = (figures.counters[otherKey] ?? 0) + n
  }
}

const addTransitions = (figures: Figures, transitions: ReadonlyArray<BreakerTransition>) => {
  figures.transitions.push(...transitions)
  figures.transitions.sort((a, b) => b.at - a.at)
  figures.transitions.length = Math.min(figures.transitions.length, maxTransitions)
}

/** Adds `source` into `target`, within the bounds. */
export const merge = (target: Figures, source: Figures): Figures => {
  for (const [series, calls] of Object.entries(source.calls)) {
    const into = callsOf(target, series)
    into.n += calls.n
    into.errors += calls.errors
    for (let bucket = 0; bucket < into.latency.length; bucket++) into.latency[bucket]! += calls.latency[bucket] ?? 0
  }
  for (const [key, n] of Object.entries(source.counters)) addCount(target, key, n)
  if (source.transitions.length > 0) addTransitions(target, source.transitions)
  return target
}

/**
 * How long a report may be on its way before the isolate stops waiting for
 * it: an RPC under a request's `waitUntil` may never settle once that
 * request's context is gone, and its counts are then lost, but the next
 * report must still go.
 */
const reportTimeoutMillis = 30_000

/** One isolate's counts since its last report. Plain numbers, no I/O. */
export class Recorder {
  #figures = emptyFigures()
  #lastReport: number
  /** When the report on its way was sent, if one is. */
  #reportingSince: number | undefined

  constructor(readonly intervalMillis: number, now: number) {
    this.#lastReport = now
  }

  /** A call to `series` (`users@green`) answered `status` (a failure when 500 or more) after `ms`. */
  call(series: string, status: number, ms: number): void {
    const calls = callsOf(this.#figures, series)
    calls.n++
    if (status >= 500) calls.errors++
    calls.latency[bucketOf(ms)]!++
  }

  count(name: string, label: string, n = 1): void {
    addCount(this.#figures, `${name}|${label}`, n)
  }

  transition(transition: BreakerTransition): void {
    addTransitions(this.#figures, [transition])
  }

  /** Whether a report is due: the interval has passed, none is on its way (for 30 s at most), and there is something to say. */
  due(now: number): boolean {
    return (this.#reportingSince === undefined || now - this.#reportingSince > reportTimeoutMillis) &&
      now - this.#lastReport >= this.intervalMillis && !isEmpty(this.#figures)
  }

  /**
   * Sends what was counted with `send`, starting afresh at once; when the
   * send fails, what it carried is added back to be sent next time.
   */
  report(now: number, send: (figures: Figures) => Promise<unknown>): Promise<void> {
    const figures = this.#figures
    this.#figures = emptyFigures()
    this.#lastReport = now
    this.#reportingSince = now
    // Only the latest report clears the mark: one given up on may settle after a newer one went.
    const done = () => {
      if (this.#reportingSince === now) this.#reportingSince = undefined
    }
    // A send that throws at once fails like one that rejects.
    let sent: Promise<unknown>
    try {
      sent = send(figures)
    } catch (error) {
      sent = Promise.reject(error)
    }
    return sent.then(done, () => {
      done()
      this.#figures = merge(figures, this.#figures)
    })
  }

  /** What is counted and not yet reported (for tests). */
  pending(): Figures {
    return this.#figures
  }
}

/** A Worker's live figures: its isolate's recorder and where it reports. */
export class LiveStats extends Context.Service<LiveStats, {
  /** The Worker's name, which names its object. */
  readonly name: string
  /** Where the mesh's figures are kept (MESH_STATS). */
  readonly namespace: DurableObjectNamespace
  readonly recorder: Recorder
  /** Hands the recorder's counts to the Worker's MeshStatsObject, when due, under `waitUntil`. */
  readonly reportIfDue: (now: number, invocation: Bindings.Invocation["Service"]) => void
}>()("meshwork/layers/observability/LiveStats") {
  /**
   * Live figures for this Worker, reported to its MeshStatsObject (the
   * `MESH_STATS` binding, object named after the Worker) every
   * `LIVE_STATS_INTERVAL_SECONDS` (default 10). Without the binding, or
   * with `LIVE_STATS = false`, nothing is counted.
   */
  static readonly layer = Layer.effectContext(Effect.gen(function*() {
    const namespace = yield* Effect.option(Bindings.durableObject("MESH_STATS"))
    const enabled = yield* Config.Boolean("LIVE_STATS").pipe(Config.withDefault(true))
    if (namespace._tag === "None" || !enabled) return Context.empty()
    const seconds = yield* Config.Number("LIVE_STATS_INTERVAL_SECONDS").pipe(Config.withDefault(10))
    const name = (yield* Telemetry.Telemetry).settings.serviceName
    const recorder = new Recorder(Math.max(0, seconds * 1000), Date.now())
    // The object's RPC (MeshStats.ts); its class stays out of Workers that only count.
    const stub = () => namespace.value.get(namespace.value.idFromName(name)) as unknown as { add(figures: Figures): Promise<void> }
    return Context.make(LiveStats, {
      name,
      namespace: namespace.value,
      recorder,
      reportIfDue: (now, invocation) => {
        if (recorder.due(now)) invocation.waitUntil(recorder.report(now, (figures) => stub().add(figures)))
      }
    })
  }))
}

/** Counts `n` under `name|label` in this Worker's live figures, if it keeps them. */
export const count = (name: string, label: string, n = 1): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    Context.getOrUndefined(fiber.context, LiveStats)?.recorder.count(name, label, n)
    return Effect.void
  })

/** Records a breaker's transition in this Worker's live figures, if it keeps them. */
export const transition = (upstream: string, from: string, to: string): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    Context.getOrUndefined(fiber.context, LiveStats)?.recorder.transition({ upstream, from, to, at: Date.now() })
    return Effect.void
  })
