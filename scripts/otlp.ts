/**
 * A small OTLP/HTTP receiver: traces, metrics and logs as OTLP/JSON or
 * protobuf (optionally gzipped) on `POST /v1/{traces,metrics,logs}`, kept in
 * memory for tests and for `npm run traces`.
 *
 * Tests that run inside workerd can only `fetch` it, so it also answers a
 * small JSON API, whatever the mode:
 *
 *   GET  /api/spans[?traceId=<hex>][&service=<name>]   received spans
 *   GET  /api/metrics[?name=<name>]                    received metrics
 *   GET  /api/exports                                  one entry per accepted export
 *   POST /api/mode   {"mode":"up"|"fail"|"hang"}       "fail" answers 503, "hang" never answers
 *   POST /api/reset                                    forget everything, mode "up"
 *
 * Both encodings go through one path: protobuf is read (by the schema tables
 * below, field numbers from opentelemetry-proto) into the OTLP/JSON shape,
 * which is then turned into plain `ReceivedSpan` / `ReceivedMetric` values.
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import { gunzipSync } from "node:zlib"

export interface ReceivedSpan {
  traceId: string
  spanId: string
  parentSpanId?: string
  name: string
  kind: number
  startTimeUnixNano: string
  endTimeUnixNano: string
  attributes: Record<string, unknown>
  events: Array<{ name: string; timeUnixNano: string; attributes: Record<string, unknown> }>
  links: Array<{ traceId: string; spanId: string; attributes: Record<string, unknown> }>
  status: { code: number; message?: string }
  resource: Record<string, unknown>
  scope: { name: string; version?: string }
}

export interface ReceivedMetric {
  name: string
  description?: string
  unit?: string
  kind: "sum" | "gauge" | "histogram" | "exponentialHistogram" | "summary"
  resource: Record<string, unknown>
  dataPoints: Array<DataPoint>
}

type DataPoint = {
  attributes: Record<string, unknown>
  value?: number
  count?: number
  sum?: number
  bucketCounts?: Array<number>
  explicitBounds?: Array<number>
  timeUnixNano: string
}

export type Mode = "up" | "fail" | "hang"
export type Signal = "traces" | "metrics" | "logs"

export interface Receiver {
  readonly url: string
  readonly port: number
  readonly spans: Array<ReceivedSpan>
  readonly metrics: Array<ReceivedMetric>
  readonly exports: Array<{ signal: Signal; contentType: string; items: number; traceIds: Array<string> }>
  mode: Mode
  close(): Promise<void>
}

// --- protobuf wire format ----------------------------------------------------

class WireError extends Error {}

type Scalar = "string" | "bytes" | "bool" | "int64" | "uint64" | "sint32" | "enum" | "fixed64" | "sfixed64" | "fixed32" | "double"
type FieldSpec = readonly [name: string, type: Scalar | (() => Schema), repeated?: "repeated"]
type Schema = { readonly [field: number]: FieldSpec }

const wireTypeOf = (type: Scalar): number =>
  type === "string" || type === "bytes" ? 2
  : type === "fixed64" || type === "sfixed64" || type === "double" ? 1
  : type === "fixed32" ? 5
  : 0

class Reader {
  pos = 0
  readonly buf: Uint8Array
  readonly view: DataView
  constructor(buf: Uint8Array) {
    this.buf = buf
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength)
  }
  get done(): boolean {
    return this.pos >= this.buf.length
  }
  varint(): bigint {
    let result = 0n
    for (let shift = 0n; shift < 70n; shift += 7n) {
      const byte = this.buf[this.pos++]
      if (byte === undefined) throw new WireError("truncated varint")
      result |= BigInt(byte & 0x7f) << shift
      if (byte < 0x80) return BigInt.asUintN(64, result)
    }
    throw new WireError("varint too long")
  }
  take(length: number): Uint8Array {
    if (length < 0 || this.pos + length > this.buf.length) throw new WireError("truncated field")
    const bytes = this.buf.subarray(this.pos, this.pos + length)
    this.pos += length
    return bytes
  }
  /** Reads a value of the given wire type, as the raw varint or bytes. */
  field(wire: number, field: number): bigint | Uint8Array {
    switch (wire) {
      case 0: return this.varint()
      case 1: return this.take(8)
      case 2: return this.take(Number(this.varint()))
      case 5: return this.take(4)
      case 3: { // a group: skip to its end tag
        for (;;) {
          if (this.done) throw new WireError("unterminated group")
          const tag = Number(this.varint())
          if ((tag & 7) === 4) {
            if (tag >>> 3 !== field) throw new WireError("mismatched group end")
            return new Uint8Array(0)
          }
          this.field(tag & 7, tag >>> 3)
        }
      }
      default: throw new WireError(`bad wire type ${wire}`)
    }
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true })
const view = (bytes: Uint8Array) => new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength)

const scalar = (raw: bigint | Uint8Array, type: Scalar): unknown => {
  if (typeof raw === "bigint") {
    switch (type) {
      case "bool": return raw !== 0n
      case "int64": return BigInt.asIntN(64, raw).toString()
      case "uint64": return raw.toString()
      case "sint32": return Number((raw >> 1n) ^ -(raw & 1n))
      default: return Number(BigInt.asIntN(32, raw)) // enum
    }
  }
  switch (type) {
    case "string": return utf8.decode(raw)
    case "bytes": return raw.slice()
    case "fixed64": return view(raw).getBigUint64(0, true).toString()
    case "sfixed64": return view(raw).getBigInt64(0, true).toString()
    case "fixed32": return view(raw).getUint32(0, true)
    default: return view(raw).getFloat64(0, true) // double
  }
}

/** Reads a message into the OTLP/JSON shape: int64s as decimal strings, bytes as Uint8Array. */
const decodeMessage = (buf: Uint8Array, schema: Schema): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  const reader = new Reader(buf)
  while (!reader.done) {
    const tag = reader.varint()
    const field = Number(tag >> 3n)
    const wire = Number(tag & 7n)
    if (field === 0 || tag > 0xffffffffn) throw new WireError("bad field number")
    if (wire === 4) throw new WireError("unexpected group end")
    const raw = reader.field(wire, field)
    const spec = schema[field]
    if (spec === undefined) continue
    const [name, type, repeated] = spec
    let values: Array<unknown>
    if (typeof type === "function") {
      if (wire !== 2 || !(raw instanceof Uint8Array)) throw new WireError(`${name}: not a message`)
      values = [decodeMessage(raw, type())]
    } else if (wire === wireTypeOf(type)) {
      values = [scalar(raw, type)]
    } else if (repeated && wire === 2 && raw instanceof Uint8Array && wireTypeOf(type) !== 2) {
      values = [] // packed
      const packed = new Reader(raw)
      while (!packed.done) values.push(scalar(packed.field(wireTypeOf(type), field), type))
    } else {
      throw new WireError(`${name}: wire type ${wire}`)
    }
    if (repeated) {
      const list = (out[name] ??= []) as Array<unknown>
      list.push(...values)
    } else {
      out[name] = values[0]
    }
  }
  return out
}

// opentelemetry-proto, by field number
const AnyValue: Schema = {
  1: ["stringValue", "string"],
  2: ["boolValue", "bool"],
  3: ["intValue", "int64"],
  4: ["doubleValue", "double"],
  5: ["arrayValue", () => ArrayValue],
  6: ["kvlistValue", () => KeyValueList],
  7: ["bytesValue", "bytes"]
}
const KeyValue: Schema = { 1: ["key", "string"], 2: ["value", () => AnyValue] }
const ArrayValue: Schema = { 1: ["values", () => AnyValue, "repeated"] }
const KeyValueList: Schema = { 1: ["values", () => KeyValue, "repeated"] }
const attributes = (field: number): Schema => ({ [field]: ["attributes", () => KeyValue, "repeated"] })
const Resource: Schema = { ...attributes(1), 2: ["droppedAttributesCount", "uint64"] }
const Scope: Schema = { 1: ["name", "string"], 2: ["version", "string"], ...attributes(3) }
const Status: Schema = { 2: ["message", "string"], 3: ["code", "enum"] }
const SpanEvent: Schema = { 1: ["timeUnixNano", "fixed64"], 2: ["name", "string"], ...attributes(3) }
const SpanLink: Schema = { 1: ["traceId", "bytes"], 2: ["spanId", "bytes"], 3: ["traceState", "string"], ...attributes(4), 6: ["flags", "fixed32"] }
const Span: Schema = {
  1: ["traceId", "bytes"],
  2: ["spanId", "bytes"],
  3: ["traceState", "string"],
  4: ["parentSpanId", "bytes"],
  5: ["name", "string"],
  6: ["kind", "enum"],
  7: ["startTimeUnixNano", "fixed64"],
  8: ["endTimeUnixNano", "fixed64"],
  ...attributes(9),
  11: ["events", () => SpanEvent, "repeated"],
  13: ["links", () => SpanLink, "repeated"],
  15: ["status", () => Status],
  16: ["flags", "fixed32"]
}
const scoped = (list: string, item: string, schema: Schema): Schema => ({
  1: ["resource", () => Resource],
  2: [list, () => ({ 1: ["scope", () => Scope], 2: [item, () => schema, "repeated"] }), "repeated"]
})
const TracesData: Schema = { 1: ["resourceSpans", () => scoped("scopeSpans", "spans", Span), "repeated"] }

const NumberDataPoint: Schema = {
  ...attributes(7),
  2: ["startTimeUnixNano", "fixed64"],
  3: ["timeUnixNano", "fixed64"],
  4: ["asDouble", "double"],
  6: ["asInt", "sfixed64"]
}
const HistogramDataPoint: Schema = {
  ...attributes(9),
  2: ["startTimeUnixNano", "fixed64"],
  3: ["timeUnixNano", "fixed64"],
  4: ["count", "fixed64"],
  5: ["sum", "double"],
  6: ["bucketCounts", "fixed64", "repeated"],
  7: ["explicitBounds", "double", "repeated"],
  11: ["min", "double"],
  12: ["max", "double"]
}
const ExponentialHistogramDataPoint: Schema = {
  ...attributes(1),
  2: ["startTimeUnixNano", "fixed64"],
  3: ["timeUnixNano", "fixed64"],
  4: ["count", "fixed64"],
  5: ["sum", "double"],
  6: ["scale", "sint32"],
  7: ["zeroCount", "fixed64"],
  12: ["min", "double"],
  13: ["max", "double"]
}
const SummaryDataPoint: Schema = { ...attributes(7), 2: ["startTimeUnixNano", "fixed64"], 3: ["timeUnixNano", "fixed64"], 4: ["count", "fixed64"], 5: ["sum", "double"] }
const points = (schema: Schema): Schema => ({ 1: ["dataPoints", () => schema, "repeated"], 2: ["aggregationTemporality", "enum"], 3: ["isMonotonic", "bool"] })
const Metric: Schema = {
  1: ["name", "string"],
  2: ["description", "string"],
  3: ["unit", "string"],
  5: ["gauge", () => points(NumberDataPoint)],
  7: ["sum", () => points(NumberDataPoint)],
  9: ["histogram", () => points(HistogramDataPoint)],
  10: ["exponentialHistogram", () => points(ExponentialHistogramDataPoint)],
  11: ["summary", () => points(SummaryDataPoint)]
}
const MetricsData: Schema = { 1: ["resourceMetrics", () => scoped("scopeMetrics", "metrics", Metric), "repeated"] }
const LogRecord: Schema = { 9: ["traceId", "bytes"], 10: ["spanId", "bytes"] }
const LogsData: Schema = { 1: ["resourceLogs", () => scoped("scopeLogs", "logRecords", LogRecord), "repeated"] }

// --- the OTLP/JSON shape to plain values --------------------------------------

type Json = Record<string, unknown>

/** A field by its lowerCamelCase name, or its proto (snake_case) name. */
const get = (o: Json, key: string): unknown => o[key] ?? o[key.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`)]

const object = (v: unknown): Json => {
  if (v === undefined || v === null) return {}
  if (typeof v !== "object" || Array.isArray(v)) throw new WireError("expected an object")
  return v as Json
}
const list = (o: Json, key: string): Array<Json> => {
  const v = get(o, key)
  if (v === undefined || v === null) return []
  if (!Array.isArray(v)) throw new WireError(`${key}: expected an array`)
  return v.map(object)
}
const text = (v: unknown): string => (typeof v === "string" ? v : v === undefined || v === null ? "" : String(v))
const optional = (v: unknown): string | undefined => (text(v) === "" ? undefined : text(v))

const number = (v: unknown): number => {
  if (typeof v === "number") return v
  if (typeof v === "string" && (v === "NaN" || !Number.isNaN(Number(v))) && v.trim() !== "") return Number(v)
  throw new WireError(`expected a number, got ${JSON.stringify(v)}`)
}
const integer = (v: unknown): bigint => {
  if (typeof v === "number" && Number.isInteger(v)) return BigInt(v)
  if (typeof v === "string" && /^-?\d+$/.test(v)) return BigInt(v)
  throw new WireError(`expected an integer, got ${JSON.stringify(v)}`)
}
const nanos = (v: unknown): string => (v === undefined || v === null ? "0" : integer(v).toString())
const int64 = (v: bigint): number | string =>
  v >= BigInt(Number.MIN_SAFE_INTEGER) && v <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(v) : v.toString()

const hex = (bytes: Uint8Array) => Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString("hex")
const base64 = (v: string): Uint8Array => {
  if (!/^[A-Za-z0-9+/_-]*={0,2}$/.test(v)) throw new WireError(`not base64: ${v}`)
  return Buffer.from(v, "base64")
}
/** A trace or span id: hex (OTLP/JSON), base64 (the proto3 JSON mapping) or bytes (protobuf). */
const id = (v: unknown): string => {
  if (v instanceof Uint8Array) return hex(v)
  const s = text(v)
  if (/^[0-9a-fA-F]*$/.test(s) && (s.length === 16 || s.length === 32)) return s.toLowerCase()
  if (/^[A-Za-z0-9+/_-]+={0,2}$/.test(s)) {
    const bytes = base64(s)
    if (bytes.length === 8 || bytes.length === 16) return hex(bytes)
  }
  if (/^([0-9a-fA-F]{2})*$/.test(s)) return s.toLowerCase()
  throw new WireError(`bad id ${JSON.stringify(s)}`)
}

const enumeration = (v: unknown, names: ReadonlyArray<string>): number => {
  if (v === undefined || v === null) return 0
  if (typeof v === "string" && names.includes(v)) return names.indexOf(v)
  return Number(integer(v))
}
const SPAN_KINDS = ["SPAN_KIND_UNSPECIFIED", "SPAN_KIND_INTERNAL", "SPAN_KIND_SERVER", "SPAN_KIND_CLIENT", "SPAN_KIND_PRODUCER", "SPAN_KIND_CONSUMER"]
const STATUS_CODES = ["STATUS_CODE_UNSET", "STATUS_CODE_OK", "STATUS_CODE_ERROR"]

const anyValue = (v: unknown): unknown => {
  const o = object(v)
  const has = (key: string) => get(o, key) !== undefined && get(o, key) !== null
  if (has("stringValue")) return text(get(o, "stringValue"))
  if (has("boolValue")) return get(o, "boolValue") === true || get(o, "boolValue") === "true"
  if (has("intValue")) return int64(integer(get(o, "intValue")))
  if (has("doubleValue")) return number(get(o, "doubleValue"))
  if (has("arrayValue")) return list(object(get(o, "arrayValue")), "values").map(anyValue)
  if (has("kvlistValue")) return attributesOf(object(get(o, "kvlistValue")), "values")
  if (has("bytesValue")) {
    const b = get(o, "bytesValue")
    return hex(b instanceof Uint8Array ? b : Array.isArray(b) ? Uint8Array.from(b.map(number)) : base64(text(b)))
  }
  return null
}
const attributesOf = (o: Json, key = "attributes"): Record<string, unknown> => {
  const out: Record<string, unknown> = {}
  for (const kv of list(o, key)) out[text(get(kv, "key"))] = anyValue(get(kv, "value"))
  return out
}

/** Each item of a resource/scope/item nesting, with its resource attributes and scope. */
const eachItem = (data: Json, levels: readonly [string, string, string]) => {
  const [resources, scopes, items] = levels
  const out: Array<{ item: Json; resource: Record<string, unknown>; scope: Json }> = []
  for (const rs of list(data, resources)) {
    const resource = attributesOf(object(get(rs, "resource")))
    for (const ss of list(rs, scopes)) {
      const scope = object(get(ss, "scope"))
      for (const item of list(ss, items)) out.push({ item, resource, scope })
    }
  }
  return out
}

const toSpan = (s: Json, resource: Record<string, unknown>, scope: Json): ReceivedSpan => {
  const parent = id(get(s, "parentSpanId"))
  const status = object(get(s, "status"))
  const message = optional(get(status, "message"))
  const version = optional(get(scope, "version"))
  return {
    traceId: id(get(s, "traceId")),
    spanId: id(get(s, "spanId")),
    ...(parent === "" ? {} : { parentSpanId: parent }),
    name: text(get(s, "name")),
    kind: enumeration(get(s, "kind"), SPAN_KINDS),
    startTimeUnixNano: nanos(get(s, "startTimeUnixNano")),
    endTimeUnixNano: nanos(get(s, "endTimeUnixNano")),
    attributes: attributesOf(s),
    events: list(s, "events").map((e) => ({ name: text(get(e, "name")), timeUnixNano: nanos(get(e, "timeUnixNano")), attributes: attributesOf(e) })),
    links: list(s, "links").map((l) => ({ traceId: id(get(l, "traceId")), spanId: id(get(l, "spanId")), attributes: attributesOf(l) })),
    status: { code: enumeration(get(status, "code"), STATUS_CODES), ...(message === undefined ? {} : { message }) },
    resource,
    scope: { name: text(get(scope, "name")), ...(version === undefined ? {} : { version }) }
  }
}

const METRIC_KINDS = ["sum", "gauge", "histogram", "exponentialHistogram", "summary"] as const

const toDataPoint = (p: Json): DataPoint => {
  const point: DataPoint = { attributes: attributesOf(p), timeUnixNano: nanos(get(p, "timeUnixNano")) }
  const present = (key: string) => get(p, key) !== undefined && get(p, key) !== null
  if (present("asDouble")) point.value = number(get(p, "asDouble"))
  else if (present("asInt")) point.value = Number(integer(get(p, "asInt")))
  if (present("count")) point.count = Number(integer(get(p, "count")))
  if (present("sum")) point.sum = number(get(p, "sum"))
  const numbers = (key: string) => {
    const v = get(p, key)
    if (!Array.isArray(v)) throw new WireError(`${key}: expected an array`)
    return v.map(number)
  }
  if (present("bucketCounts")) point.bucketCounts = numbers("bucketCounts")
  if (present("explicitBounds")) point.explicitBounds = numbers("explicitBounds")
  return point
}

const toMetric = (m: Json, resource: Record<string, unknown>): ReceivedMetric | undefined => {
  const kind = METRIC_KINDS.find((k) => get(m, k) !== undefined && get(m, k) !== null)
  if (kind === undefined) return undefined
  const description = optional(get(m, "description"))
  const unit = optional(get(m, "unit"))
  return {
    name: text(get(m, "name")),
    ...(description === undefined ? {} : { description }),
    ...(unit === undefined ? {} : { unit }),
    kind,
    resource,
    dataPoints: list(object(get(m, kind)), "dataPoints").map(toDataPoint)
  }
}

type Encoding = "json" | "protobuf"

const encodingOf = (contentType: string): Encoding | undefined => {
  const type = contentType.split(";")[0]?.trim().toLowerCase()
  return type === "application/json" ? "json"
    : type === "application/x-protobuf" || type === "application/protobuf" ? "protobuf"
    : undefined
}

const parse = (body: Uint8Array, contentType: string, schema: Schema): Json => {
  const encoding = encodingOf(contentType)
  if (encoding === "protobuf") return decodeMessage(body, schema)
  if (encoding === "json") {
    const data: unknown = JSON.parse(Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString("utf8"))
    if (typeof data !== "object" || data === null || Array.isArray(data)) throw new WireError("expected an object")
    return data as Json
  }
  throw new WireError(`unsupported content type ${contentType}`)
}

/** An OTLP traces export request (OTLP/JSON or protobuf) as plain spans. */
export const decodeTraces = (body: Uint8Array, contentType: string): Array<ReceivedSpan> =>
  eachItem(parse(body, contentType, TracesData), ["resourceSpans", "scopeSpans", "spans"])
    .map(({ item, resource, scope }) => toSpan(item, resource, scope))

/** An OTLP metrics export request (OTLP/JSON or protobuf) as plain metrics. */
export const decodeMetrics = (body: Uint8Array, contentType: string): Array<ReceivedMetric> =>
  eachItem(parse(body, contentType, MetricsData), ["resourceMetrics", "scopeMetrics", "metrics"])
    .flatMap(({ item, resource }) => toMetric(item, resource) ?? [])

/** The log records of an OTLP logs export request: only their trace ids are kept. */
const decodeLogs = (body: Uint8Array, contentType: string): Array<{ traceId: string }> =>
  eachItem(parse(body, contentType, LogsData), ["resourceLogs", "scopeLogs", "logRecords"])
    .map(({ item }) => ({ traceId: id(get(item, "traceId")) }))

// --- the server ---------------------------------------------------------------

const send = (res: ServerResponse, status: number, body: string | Uint8Array, contentType: string) => {
  res.writeHead(status, { "content-type": contentType, "content-length": Buffer.byteLength(body) })
  res.end(body)
}
const sendJson = (res: ServerResponse, status: number, value: unknown) =>
  send(res, status, JSON.stringify(value), "application/json")

/** An OTLP failure answer: a google.rpc.Status{code(1), message(2)} in the request's encoding. */
const sendStatus = (res: ServerResponse, status: number, message: string, encoding: Encoding | undefined) => {
  const code = status === 503 ? 14 : 3 // UNAVAILABLE, INVALID_ARGUMENT
  if (encoding !== "protobuf") return sendJson(res, status, { code, message })
  const text = Buffer.from(message.slice(0, 1000), "utf8")
  const length = text.length < 0x80 ? [text.length] : [(text.length & 0x7f) | 0x80, text.length >> 7]
  send(res, status, Buffer.concat([Buffer.from([0x08, code, 0x12, ...length]), text]), "application/x-protobuf")
}

const readBody = (req: IncomingMessage): Promise<Buffer> =>
  new Promise((resolve, reject) => {
    const chunks: Array<Buffer> = []
    req.on("data", (chunk: Buffer) => chunks.push(chunk))
    req.on("end", () => resolve(Buffer.concat(chunks)))
    req.on("error", reject)
  })

export const startReceiver = (options: {
  port?: number
  host?: string
  /** Don't keep the process alive for the server. */
  unref?: boolean
  onSpans?: (spans: Array<ReceivedSpan>) => void
  onMetrics?: (metrics: Array<ReceivedMetric>) => void
} = {}): Promise<Receiver> => {
  const host = options.host ?? "127.0.0.1"
  const spans: Array<ReceivedSpan> = []
  const metrics: Array<ReceivedMetric> = []
  const exports: Receiver["exports"] = []
  let mode: Mode = "up"

  /** Decodes an export and says how to record it; throws on an undecodable body. */
  const decode = (signal: Signal, body: Uint8Array, contentType: string): () => void => {
    const type = contentType.split(";")[0]?.trim().toLowerCase() ?? ""
    if (signal === "traces") {
      const received = decodeTraces(body, contentType)
      return () => {
        spans.push(...received)
        exports.push({ signal, contentType: type, items: received.length, traceIds: [...new Set(received.map((s) => s.traceId))] })
        options.onSpans?.(received)
      }
    }
    if (signal === "metrics") {
      const received = decodeMetrics(body, contentType)
      return () => {
        metrics.push(...received)
        exports.push({ signal, contentType: type, items: received.length, traceIds: [] })
        options.onMetrics?.(received)
      }
    }
    const records = decodeLogs(body, contentType)
    const traceIds = [...new Set(records.map((r) => r.traceId).filter((t) => t !== ""))]
    return () => void exports.push({ signal, contentType: type, items: records.length, traceIds })
  }

  const exportRequest = async (signal: Signal, req: IncomingMessage, res: ServerResponse) => {
    const contentType = req.headers["content-type"] ?? ""
    const encoding = encodingOf(contentType)
    let body: Uint8Array = await readBody(req)
    if (encoding === undefined) return send(res, 415, `unsupported content type: ${contentType}\n`, "text/plain")
    const contentEncoding = (req.headers["content-encoding"] ?? "identity").trim().toLowerCase()
    if (contentEncoding !== "identity") {
      if (contentEncoding !== "gzip") return send(res, 415, `unsupported content encoding: ${contentEncoding}\n`, "text/plain")
      try {
        body = gunzipSync(body)
      } catch {
        return sendStatus(res, 400, "bad gzip body", encoding)
      }
    }
    let record: () => void
    try {
      record = decode(signal, body, contentType)
    } catch (error) {
      return sendStatus(res, 400, `undecodable ${signal} export: ${error instanceof Error ? error.message : String(error)}`, encoding)
    }
    record()
    if (encoding === "json") sendJson(res, 200, {})
    else send(res, 200, new Uint8Array(0), "application/x-protobuf")
  }

  const api = async (path: string, query: URLSearchParams, req: IncomingMessage, res: ServerResponse) => {
    const route = `${req.method} ${path}`
    if (route === "GET /api/spans") {
      const traceId = query.get("traceId")?.toLowerCase()
      const service = query.get("service")
      return sendJson(res, 200, spans.filter((s) =>
        (traceId === undefined || s.traceId === traceId) && (service === null || s.resource["service.name"] === service)
      ))
    }
    if (route === "GET /api/metrics") {
      const name = query.get("name")
      return sendJson(res, 200, metrics.filter((m) => name === null || m.name === name))
    }
    if (route === "GET /api/exports") return sendJson(res, 200, exports)
    if (route === "POST /api/mode") {
      let requested: unknown
      try {
        requested = (JSON.parse((await readBody(req)).toString("utf8")) as { mode?: unknown } | null)?.mode
      } catch {
        requested = undefined
      }
      if (requested !== "up" && requested !== "fail" && requested !== "hang") {
        return sendJson(res, 400, { error: `mode must be "up", "fail" or "hang"` })
      }
      mode = requested
      return sendJson(res, 200, { mode })
    }
    if (route === "POST /api/reset") {
      spans.length = 0
      metrics.length = 0
      exports.length = 0
      mode = "up"
      return sendJson(res, 200, { mode })
    }
    req.resume()
    sendJson(res, 404, { error: `no route ${route}` })
  }

  const route = async (req: IncomingMessage, res: ServerResponse) => {
    const url = new URL(req.url ?? "/", "http://receiver")
    if (url.pathname.startsWith("/api/")) return api(url.pathname, url.searchParams, req, res)
    const signal = /^\/v1\/(traces|metrics|logs)$/.exec(url.pathname)?.[1] as Signal | undefined
    if (req.method === "POST" && url.pathname.startsWith("/v1/")) {
      // Hung requests stay open until the client goes away or close() destroys the socket.
      if (mode === "hang") return void req.resume()
      if (mode === "fail") {
        req.resume()
        return sendStatus(res, 503, "the receiver is in fail mode", encodingOf(req.headers["content-type"] ?? ""))
      }
      if (signal !== undefined) return exportRequest(signal, req, res)
    }
    req.resume()
    sendJson(res, signal === undefined ? 404 : 405, { error: `no route ${req.method} ${url.pathname}` })
  }

  const server = createServer((req, res) => {
    route(req, res).catch((error: unknown) => {
      if (!res.headersSent) sendJson(res, 500, { error: String(error) })
      else res.destroy()
    })
  })

  return new Promise((resolve, reject) => {
    server.once("error", reject)
    server.listen(options.port ?? 4318, host, () => {
      server.off("error", reject)
      if (options.unref) server.unref()
      const address = server.address()
      const port = typeof address === "object" && address !== null ? address.port : options.port ?? 4318
      let closing: Promise<void> | undefined
      resolve({
        url: `http://${host.includes(":") ? `[${host}]` : host}:${port}`,
        port,
        spans,
        metrics,
        exports,
        get mode() {
          return mode
        },
        set mode(value: Mode) {
          mode = value
        },
        close: () =>
          closing ??= new Promise<void>((done) => {
            server.close(() => done())
            server.closeAllConnections()
          })
      })
    })
  })
}
