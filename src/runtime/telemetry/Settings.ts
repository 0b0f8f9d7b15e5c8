/** The telemetry settings of a Worker, from its vars (the table in src/runtime/Telemetry.ts). */
import * as Config from "effect/Config"
import * as Effect from "effect/Effect"

export interface Settings {
  readonly serviceName: string
  readonly serviceVersion: string
  readonly environment: string
  /** The collector's base URL, or undefined when exporting is off. */
  readonly endpoint: string | undefined
  readonly protocol: "json" | "protobuf"
  readonly headers: Readonly<Record<string, string>>
  readonly timeoutMs: number
  /** How long each round of a drain waits before it takes the ready spans, so one export carries many requests' spans. */
  readonly exportDelayMs: number
  readonly sampleRatio: number
  readonly trustClientTraceparent: boolean
  /** Keep a copy of every sampled span in the mesh's trace store (the MESH_STATS binding), for the console. */
  readonly keepTraces: boolean
  readonly metricsIntervalMs: number
  readonly maxBufferedSpans: number
}

/** `key=value,key=value` (values may be percent-encoded), as OTEL_EXPORTER_OTLP_HEADERS has it. */
const parseHeaders = (value: string): Record<string, string> => {
  const decode = (part: string) => {
    try {
      return decodeURIComponent(part.trim())
    } catch {
      return part.trim()
    }
  }
  const headers: Record<string, string> = {}
  for (const pair of value.split(",")) {
    const at = pair.indexOf("=")
    if (at > 0) headers[decode(pair.slice(0, at))] = decode(pair.slice(at + 1))
  }
  return headers
}

/** The defaults of every setting but the service's name. */
export const defaults = {
  serviceVersion: "0.1.0",
  environment: "development",
  // No collector unless one is given: a deployed Worker never exports to a guess.
  endpoint: "",
  protocol: "json",
  headers: {},
  timeoutMs: 2000,
  // A few ms more before a trace leaves buys one POST per many requests under load (measured: bench/RESULTS.md).
  exportDelayMs: 50,
  sampleRatio: 1,
  trustClientTraceparent: false,
  keepTraces: false,
  metricsIntervalMs: 60_000,
  maxBufferedSpans: 4096
} as const satisfies Omit<Settings, "serviceName">

/** The settings of `serviceName`, from the Worker's vars. */
export const settings = (serviceName: string) =>
  Config.all({
    endpoint: Config.String("OTLP_ENDPOINT").pipe(Config.withDefault(defaults.endpoint)),
    protocol: Config.Literals(["json", "protobuf"], "OTLP_PROTOCOL").pipe(Config.withDefault(defaults.protocol)),
    headers: Config.String("OTLP_HEADERS").pipe(Config.withDefault("")),
    timeoutMs: Config.Int("OTLP_TIMEOUT_MS").pipe(Config.withDefault(defaults.timeoutMs)),
    exportDelayMs: Config.Int("OTLP_EXPORT_DELAY_MS").pipe(Config.withDefault(defaults.exportDelayMs)),
    serviceVersion: Config.String("SERVICE_VERSION").pipe(Config.withDefault(defaults.serviceVersion)),
    environment: Config.String("DEPLOYMENT_ENVIRONMENT").pipe(Config.withDefault(defaults.environment)),
    sampleRatio: Config.Number("TRACE_SAMPLE_RATIO").pipe(Config.withDefault(defaults.sampleRatio)),
    trustClientTraceparent: Config.Boolean("TRUST_CLIENT_TRACEPARENT").pipe(Config.withDefault(defaults.trustClientTraceparent)),
    keepTraces: Config.Boolean("KEEP_TRACES").pipe(Config.withDefault(defaults.keepTraces)),
    metricsIntervalSeconds: Config.Number("METRICS_INTERVAL_SECONDS").pipe(Config.withDefault(defaults.metricsIntervalMs / 1000))
  }).pipe(Effect.map((c): Settings => {
    const endpoint = c.endpoint.trim().replace(/\/+$/, "")
    return {
      serviceName,
      serviceVersion: c.serviceVersion,
      environment: c.environment,
      endpoint: endpoint === "" || endpoint === "off" ? undefined : endpoint,
      protocol: c.protocol,
      headers: parseHeaders(c.headers),
      timeoutMs: Math.max(1, c.timeoutMs),
      exportDelayMs: Math.min(5000, Math.max(0, c.exportDelayMs)),
      sampleRatio: Math.min(1, Math.max(0, c.sampleRatio)),
      trustClientTraceparent: c.trustClientTraceparent,
      keepTraces: c.keepTraces,
      metricsIntervalMs: Math.max(0, c.metricsIntervalSeconds * 1000),
      maxBufferedSpans: defaults.maxBufferedSpans
    }
  }))
