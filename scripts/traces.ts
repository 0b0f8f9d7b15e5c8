/**
 * `npm run traces`: an OTLP/HTTP receiver (scripts/otlp.ts) that prints each
 * trace as a waterfall once it has been quiet for a moment, for watching the
 * local mesh without a Jaeger.
 *
 *   npm run traces                     # on http://127.0.0.1:4318: npm start -- --otlp http://127.0.0.1:4318 sends there
 *   npm run traces -- --port 4319 --host 0.0.0.0 --quiet-ms 3000
 */
import { startReceiver, type ReceivedMetric, type ReceivedSpan } from "./otlp.ts"

const ansi = (code: string) => (s: string) => (s === "" ? s : `\x1b[${code}m${s}\x1b[0m`)
const styles = { dim: ansi("2"), bold: ansi("1"), red: ansi("31"), yellow: ansi("33"), green: ansi("32"), cyan: ansi("36"), blue: ansi("34") }
const plain = Object.fromEntries(Object.keys(styles).map((k) => [k, (s: string) => s])) as typeof styles

const service = (span: ReceivedSpan) => String(span.resource["service.name"] ?? "?")
const ms = (nanos: bigint) => Number(nanos) / 1e6
/** Milliseconds to about 3 significant digits. */
const formatMs = (value: number) =>
  value >= 100 ? value.toFixed(0) : value >= 10 ? value.toFixed(1) : value >= 1 ? value.toFixed(2) : value === 0 ? "0" : value.toPrecision(3)
const short = (value: unknown, max = 40) => {
  const s = typeof value === "string" ? value : JSON.stringify(value) ?? String(value)
  return s.length > max ? `${s.slice(0, max - 1)}…` : s
}
const fit = (s: string, width: number) => (s.length > width ? `${s.slice(0, width - 1)}…` : s.padEnd(width))

/** A trace's spans as a waterfall: a header, then one line per span in tree order. */
export const renderTrace = (spans: Array<ReceivedSpan>, options: { color?: boolean; width?: number } = {}): string => {
  const c = options.color ? styles : plain
  const width = options.width ?? 40
  if (spans.length === 0) return ""
  const start = spans.reduce((min, s) => (BigInt(s.startTimeUnixNano) < min ? BigInt(s.startTimeUnixNano) : min), BigInt(spans[0]!.startTimeUnixNano))
  const end = spans.reduce((max, s) => (BigInt(s.endTimeUnixNano) > max ? BigInt(s.endTimeUnixNano) : max), 0n)
  const total = end > start ? end - start : 0n
  const services = new Set(spans.map(service))

  // Tree order: children under their parent by start time; orphans are roots.
  const ids = new Set(spans.map((s) => s.spanId))
  const children = new Map<string | undefined, Array<ReceivedSpan>>()
  for (const span of spans) {
    const parent = span.parentSpanId !== undefined && ids.has(span.parentSpanId) ? span.parentSpanId : undefined
    children.set(parent, [...(children.get(parent) ?? []), span])
  }
  for (const list of children.values()) list.sort((a, b) => (BigInt(a.startTimeUnixNano) < BigInt(b.startTimeUnixNano) ? -1 : 1))
  const ordered: Array<{ span: ReceivedSpan; depth: number }> = []
  const visited = new Set<ReceivedSpan>()
  const walk = (span: ReceivedSpan, depth: number) => {
    if (visited.has(span)) return
    visited.add(span)
    ordered.push({ span, depth })
    for (const child of children.get(span.spanId) ?? []) walk(child, depth + 1)
  }
  for (const root of children.get(undefined) ?? []) walk(root, 0)
  for (const span of spans) walk(span, 0) // spans in a parent cycle

  const labels = ordered.map(({ span, depth }) => `${"  ".repeat(depth)}${service(span)} ${span.name}`)
  const labelWidth = Math.min(56, Math.max(...labels.map((l) => l.length)))
  const lines = [
    c.bold(`trace ${spans[0]!.traceId}`) +
      c.dim(` · ${spans.length} span${spans.length === 1 ? "" : "s"} · ${services.size} service${services.size === 1 ? "" : "s"} · ${formatMs(ms(total))} ms`)
  ]
  ordered.forEach(({ span, depth }, i) => {
    const from = BigInt(span.startTimeUnixNano) - start
    const duration = BigInt(span.endTimeUnixNano) - BigInt(span.startTimeUnixNano)
    const offset = total === 0n ? 0 : Math.min(width - 1, Math.floor((Number(from) / Number(total)) * width))
    const length = total === 0n ? 1 : Math.max(1, Math.min(width - offset, Math.round((Number(duration) / Number(total)) * width)))
    const failed = span.status.code === 2
    const bar = (failed ? c.red : c.blue)("━".repeat(length))
    const httpStatus = span.attributes["http.response.status_code"]
    const head = "  ".repeat(depth) + service(span)
    const label = fit(labels[i]!, labelWidth)
    const parts = [
      label.startsWith(head) ? "  ".repeat(depth) + c.cyan(service(span)) + label.slice(head.length) : label,
      c.dim("·".repeat(offset)) + bar + c.dim("·".repeat(width - offset - length)),
      `${formatMs(ms(duration)).padStart(6)} ms`
    ]
    if (httpStatus !== undefined) parts.push((Number(httpStatus) >= 500 ? c.red : Number(httpStatus) >= 400 ? c.yellow : c.green)(String(httpStatus)))
    if (failed) {
      const type = span.attributes["error.type"]
      parts.push(c.red(`✗ ${type === undefined ? "ERROR" : short(type)}${span.status.message ? `: ${short(span.status.message, 60)}` : ""}`))
    }
    lines.push(parts.join("  "))
    for (const event of span.events) {
      const at = formatMs(ms(BigInt(event.timeUnixNano) - BigInt(span.startTimeUnixNano)))
      const attrs = Object.entries(event.attributes).slice(0, 4).map(([k, v]) => `${k}=${short(v, 30)}`)
      lines.push(c.dim(`${"  ".repeat(depth)}  • ${event.name} +${at}ms ${attrs.join(" ")}`.trimEnd()))
    }
  })
  return lines.join("\n")
}

const main = async () => {
  if (process.argv.includes("--help") || process.argv.includes("-h")) {
    console.log(`npm run traces: a local OTLP receiver that prints each trace as a waterfall.

  npm run traces                                  on http://127.0.0.1:4318
  npm run traces -- --port 4319 --host 0.0.0.0 --quiet-ms 3000

Send the mesh's traces there with: npm start -- --otlp http://127.0.0.1:4318`)
    return
  }
  const flag = (name: string) => {
    const i = process.argv.indexOf(`--${name}`)
    return i === -1 ? undefined : process.argv[i + 1]
  }
  const port = Number(flag("port") ?? 4318)
  const quietMs = Number(flag("quiet-ms") ?? 1500)
  if (!Number.isInteger(port) || !(quietMs >= 0)) {
    console.error("usage: npm run traces -- [--port N] [--host H] [--quiet-ms N]")
    process.exit(2)
  }
  const color = process.stdout.isTTY === true
  const pending = new Map<string, { spans: Array<ReceivedSpan>; timer: NodeJS.Timeout | undefined }>()
  const flush = (traceId: string) => {
    const trace = pending.get(traceId)
    if (trace === undefined) return
    clearTimeout(trace.timer)
    pending.delete(traceId)
    console.log(`\n${renderTrace(trace.spans, { color })}`)
  }
  const lastMetrics = new Map<string, number>()
  const onMetrics = (metrics: Array<ReceivedMetric>) => {
    const counts = new Map<string, number>()
    for (const m of metrics) {
      const name = String(m.resource["service.name"] ?? "?")
      counts.set(name, (counts.get(name) ?? 0) + 1)
    }
    for (const [name, n] of counts) {
      if (Date.now() - (lastMetrics.get(name) ?? 0) < 10_000) continue
      lastMetrics.set(name, Date.now())
      console.log((color ? styles.dim : String)(`metrics: ${name} ${n} metric${n === 1 ? "" : "s"}`))
    }
  }
  const receiver = await startReceiver({
    port,
    ...(flag("host") === undefined ? {} : { host: flag("host")! }),
    onMetrics,
    onSpans: (spans) => {
      for (const traceId of new Set(spans.map((s) => s.traceId))) {
        const trace = pending.get(traceId) ?? { spans: [], timer: undefined }
        clearTimeout(trace.timer)
        trace.spans.push(...spans.filter((s) => s.traceId === traceId))
        trace.timer = setTimeout(() => flush(traceId), quietMs)
        pending.set(traceId, trace)
      }
    }
  })
  console.log(`OTLP receiver on ${receiver.url}: start the mesh with \`npm start -- --otlp ${receiver.url}\`; Ctrl-C to stop`)
  const stop = async () => {
    for (const traceId of [...pending.keys()]) flush(traceId)
    await receiver.close()
    process.exit(0)
  }
  process.once("SIGINT", stop)
  process.once("SIGTERM", stop)
}

if (import.meta.main) await main()
