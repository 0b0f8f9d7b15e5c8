/**
 * Where the live figures of LiveStats.ts end up: the MeshStatsObject that
 * adds every isolate's reports into 10 s windows (kept 15 minutes, in memory
 * and in its storage), and the report the admin API reads from it
 * (`GET /api/admin/live`, docs/console.md). The object named `(traces)` keeps
 * the mesh's sample of recent traces (TraceSample.ts).
 */
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Schema from "effect/Schema"
import * as DurableObjects from "../../runtime/DurableObjects.ts"
import type { KeptSpan } from "../../runtime/Telemetry.ts"
import {
  type BreakerTransition,
  type Calls,
  emptyFigures,
  type Figures,
  latencyBounds,
  maxTransitions,
  merge,
  other
} from "./LiveStats.ts"
import { type KeptTrace, summarize, type TraceDetail, TraceSample, type TraceSummary } from "./TraceSample.ts"

/** The object's window, and how long it keeps windows. */
export const windowMillis = 10_000
export const retentionMillis = 15 * 60_000

// The object: windows of every isolate's reports

/** Reports added into 10 s windows, kept for 15 minutes: the object's state, without its storage. */
export class Windows {
  readonly windows = new Map<number, Figures>()
  transitions: Array<BreakerTransition> = []

  /** Adds `figures` into the window of `now`; answers the windows it changed and dropped. */
  add(figures: Figures, now: number): { readonly changed: number; readonly dropped: ReadonlyArray<number> } {
    const start = now - (now % windowMillis)
    const window = this.windows.get(start) ?? emptyFigures()
    merge(window, { calls: figures.calls, counters: figures.counters, transitions: [] })
    this.windows.set(start, window)
    if (figures.transitions.length > 0) {
      this.transitions = [...figures.transitions, ...this.transitions].sort((a, b) => b.at - a.at).slice(0, maxTransitions)
    }
    return { changed: start, dropped: this.prune(now) }
  }

  /** Drops windows older than the retention; answers their starts. */
  prune(now: number): ReadonlyArray<number> {
    const dropped = [...this.windows.keys()].filter((start) => start <= now - retentionMillis)
    for (const start of dropped) this.windows.delete(start)
    this.transitions = this.transitions.filter((transition) => transition.at > now - retentionMillis)
    return dropped
  }

  /** The windows that ended after `since`, oldest first. */
  since(since: number): Array<{ readonly at: number; readonly figures: Figures }> {
    return [...this.windows.entries()]
      .filter(([start]) => start + windowMillis > since)
      .sort(([a], [b]) => a - b)
      .map(([at, figures]) => ({ at, figures }))
  }
}

const windowKey = (start: number) => `w:${start}`

/**
 * One Worker's live figures across its isolates (`LiveStats`): reports
 * added into windows, kept in storage (one key per window, and the recent
 * breaker transitions), for `retentionMillis`. The object named `(traces)`
 * keeps the mesh's sample of recent traces instead (TraceSample.ts), one
 * storage key per trace.
 */
export class MeshStatsObject extends DurableObjects.make({
  name: "MeshStatsObject",
  layer: Layer.empty
}) {
  #windows: Windows | undefined
  #sample: TraceSample | undefined

  #loadSample(state: DurableObjectState): TraceSample {
    if (this.#sample !== undefined) return this.#sample
    const sample = new TraceSample()
    for (const [key, value] of state.storage.kv.list<KeptTrace>({ prefix: "t:" })) sample.traces.set(key.slice(2), value)
    for (const id of sample.prune(Date.now())) state.storage.kv.delete(`t:${id}`)
    return (this.#sample = sample)
  }

  /** Keeps a Worker's spans in the sample (`KEEP_TRACES`). */
  keepSpans(spans: ReadonlyArray<KeptSpan>): Promise<void> {
    return this.run(DurableObjects.State.useSync((state) => {
      const sample = this.#loadSample(state)
      const { changed, dropped } = sample.keep(spans, Date.now())
      for (const id of changed) state.storage.kv.put(`t:${id}`, sample.traces.get(id)!)
      for (const id of dropped) state.storage.kv.delete(`t:${id}`)
    }))
  }

  /** The kept traces, newest first. */
  traces(options: { readonly limit: number; readonly series?: string | undefined; readonly errors?: boolean | undefined }): Promise<Array<TraceSummary>> {
    return this.run(DurableObjects.State.useSync((state) => this.#loadSample(state).list(options)))
  }

  /** One kept trace with its spans, or none. */
  trace(traceId: string): Promise<TraceDetail | undefined> {
    return this.run(DurableObjects.State.useSync((state) => {
      const trace = this.#loadSample(state).traces.get(traceId)
      if (trace === undefined) return undefined
      return { ...summarize(traceId, trace), items: [...trace.spans].sort((a, b) => a.startMs - b.startMs) }
    }))
  }

  #load(state: DurableObjectState): Windows {
    if (this.#windows !== undefined) return this.#windows
    const windows = new Windows()
    for (const [key, value] of state.storage.kv.list<Figures>({ prefix: "w:" })) windows.windows.set(Number(key.slice(2)), value)
    windows.transitions = state.storage.kv.get<Array<BreakerTransition>>("transitions") ?? []
    windows.prune(Date.now())
    return (this.#windows = windows)
  }

  /** Adds one isolate's report. */
  add(figures: Figures): Promise<void> {
    return this.run(DurableObjects.State.useSync((state) => {
      const windows = this.#load(state)
      const { changed, dropped } = windows.add(figures, Date.now())
      const kv = state.storage.kv
      kv.put(windowKey(changed), windows.windows.get(changed)!)
      for (const start of dropped) kv.delete(windowKey(start))
      if (figures.transitions.length > 0 || dropped.length > 0) kv.put("transitions", windows.transitions)
    }))
  }

  /** The windows that ended after `since` (epoch ms), and the recent breaker transitions. */
  read(since: number): Promise<{ readonly windows: Array<{ readonly at: number; readonly figures: Figures }>; readonly transitions: Array<BreakerTransition> }> {
    return this.run(DurableObjects.State.useSync((state) => {
      const windows = this.#load(state)
      windows.prune(Date.now())
      return { windows: windows.since(since), transitions: windows.transitions.filter((transition) => transition.at > since) }
    }))
  }
}

// ---------------------------------------------------------------------------
// The report: what the admin API answers

export const SeriesFigures = Schema.Struct({
  /** `users@green`: the upstream, and its version when its route has versions. */
  series: Schema.String,
  /** The Worker that made the calls (`router`). */
  from: Schema.String,
  requests: Schema.Number,
  errors: Schema.Number,
  /** Calls per second over the report's span. */
  perSecond: Schema.Number,
  /** Failed calls / calls, 0 to 1. */
  errorRate: Schema.Number,
  /** Latency percentiles in ms, from the buckets (linear within one); null without calls. */
  p50Ms: Schema.NullOr(Schema.Number),
  p99Ms: Schema.NullOr(Schema.Number),
  /** Calls and failures per window, oldest first (the report's `windowStarts`). */
  timeline: Schema.Array(Schema.Struct({ requests: Schema.Number, errors: Schema.Number }))
})
export type SeriesFigures = typeof SeriesFigures.Type

export const LiveReport = Schema.Struct({
  /** The span covered: from the start of the oldest window asked for to now. */
  from: Schema.String,
  to: Schema.String,
  windowSeconds: Schema.Number,
  /** Epoch ms of each window of `timeline`. */
  windowStarts: Schema.Array(Schema.Number),
  series: Schema.Array(SeriesFigures),
  /** Policy decisions: `{ name: "ratelimit.rejected", label: "api", count }`, by the Worker that made them. */
  counters: Schema.Array(Schema.Struct({ name: Schema.String, label: Schema.String, from: Schema.String, count: Schema.Number })),
  /** Breaker transitions, newest first. */
  transitions: Schema.Array(Schema.Struct({ upstream: Schema.String, from: Schema.String, to: Schema.String, at: Schema.String, worker: Schema.String })),
  /** Workers whose figures could not be read. */
  unavailable: Schema.Array(Schema.String)
})
export type LiveReport = typeof LiveReport.Type

/** The latency at quantile `q` (0 to 1) of bucketed calls, linear within its bucket; null without calls. */
export const percentile = (calls: Calls, q: number): number | null => {
  if (calls.n === 0) return null
  const rank = q * calls.n
  let seen = 0
  for (let bucket = 0; bucket < calls.latency.length; bucket++) {
    const inBucket = calls.latency[bucket] ?? 0
    if (inBucket > 0 && seen + inBucket >= rank) {
      const low = bucket === 0 ? 0 : latencyBounds[bucket - 1]!
      const high = latencyBounds[bucket]
      // Slower than the last bound: all that is known is that lower bound.
      if (high === undefined) return low
      return Math.round((low + ((rank - seen) / inBucket) * (high - low)) * 10) / 10
    }
    seen += inBucket
  }
  return latencyBounds[latencyBounds.length - 1]!
}

/**
 * The live figures of the Workers `workers` (their MeshStatsObjects in
 * `namespace`) over the last `minutes`, at `now`.
 */
export const readReport = (namespace: DurableObjectNamespace, workers: ReadonlyArray<string>, minutes: number, now: number) =>
  Effect.gen(function*() {
    const first = now - (now % windowMillis) - (Math.ceil((minutes * 60_000) / windowMillis) - 1) * windowMillis
    const windowStarts = Array.from({ length: (now - (now % windowMillis) - first) / windowMillis + 1 }, (_, i) => first + i * windowMillis)
    const read = yield* Effect.forEach(workers, (worker) =>
      Effect.tryPromise(() => (namespace.get(namespace.idFromName(worker)) as unknown as Pick<MeshStatsObject, "read">).read(first)).pipe(
        Effect.map((answer) => ({ worker, answer })),
        Effect.orElseSucceed(() => ({ worker, answer: undefined }))
      ), { concurrency: "unbounded" })
    const seconds = Math.max(1, (now - first) / 1000)
    const series: Array<SeriesFigures> = []
    const counters: Array<LiveReport["counters"][number]> = []
    const transitions: Array<LiveReport["transitions"][number]> = []
    for (const { worker, answer } of read) {
      if (answer === undefined) continue
      const total = emptyFigures()
      for (const { figures } of answer.windows) merge(total, figures)
      // Each series' calls per window; a series the total folded into (other) is counted there too.
      const timelines = new Map<string, Array<{ requests: number; errors: number }>>()
      for (const { at, figures } of answer.windows) {
        const slot = windowStarts.indexOf(at)
        if (slot === -1) continue
        for (const [name, calls] of Object.entries(figures.calls)) {
          const key = total.calls[name] === undefined ? other : name
          let timeline = timelines.get(key)
          if (timeline === undefined) timelines.set(key, timeline = windowStarts.map(() => ({ requests: 0, errors: 0 })))
          timeline[slot]!.requests += calls.n
          timeline[slot]!.errors += calls.errors
        }
      }
      for (const [name, calls] of Object.entries(total.calls)) {
        series.push({
          series: name,
          from: worker,
          requests: calls.n,
          errors: calls.errors,
          perSecond: Math.round((calls.n / seconds) * 100) / 100,
          errorRate: calls.n === 0 ? 0 : Math.round((calls.errors / calls.n) * 10_000) / 10_000,
          p50Ms: percentile(calls, 0.5),
          p99Ms: percentile(calls, 0.99),
          timeline: timelines.get(name) ?? []
        })
      }
      for (const [key, n] of Object.entries(total.counters)) {
        const at = key.indexOf("|")
        counters.push({ name: key.slice(0, at), label: key.slice(at + 1), from: worker, count: n })
      }
      for (const transition of answer.transitions) transitions.push({ ...transition, at: new Date(transition.at).toISOString(), worker })
    }
    series.sort((a, b) => a.series.localeCompare(b.series))
    counters.sort((a, b) => a.name.localeCompare(b.name) || a.label.localeCompare(b.label))
    transitions.sort((a, b) => b.at.localeCompare(a.at))
    return {
      from: new Date(first).toISOString(),
      to: new Date(now).toISOString(),
      windowSeconds: windowMillis / 1000,
      windowStarts,
      series,
      counters,
      transitions,
      unavailable: read.filter(({ answer }) => answer === undefined).map(({ worker }) => worker)
    } satisfies LiveReport
  })
