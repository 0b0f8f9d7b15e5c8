/** JSON log lines that name their trace, and `error.type` from typed failures an HTTP API rendered. */
import * as Context from "effect/Context"
import * as ErrorReporter from "effect/ErrorReporter"
import * as Logger from "effect/Logger"
import * as Tracer from "effect/Tracer"
import { errorTag, ServerSpan } from "./TraceContext.ts"

/**
 * Writes each log line as one JSON object naming the service, its version
 * (two versions of one service, blue and green, tell apart by it) and the
 * trace and span it belongs to.
 */
export const jsonLogger = (serviceName: string, serviceVersion?: string) =>
  Logger.make((options) => {
    const entry = Logger.formatStructured.log(options) as Record<string, unknown>
    const span = Context.getOrUndefined(options.fiber.context, Tracer.ParentSpan)
    // Annotations first: a field of the line's own is never overwritten by one.
    const line = {
      ...(entry["annotations"] as object),
      timestamp: entry["timestamp"],
      level: entry["level"],
      message: entry["message"],
      service: serviceName,
      ...(serviceVersion === undefined ? {} : { version: serviceVersion }),
      ...(span === undefined ? {} : { trace_id: span.traceId.padStart(32, "0"), span_id: span.spanId }),
      ...(entry["cause"] === undefined ? {} : { cause: entry["cause"] }),
      ...(Object.keys(entry["spans"] as object).length === 0 ? {} : { spans: entry["spans"] })
    }
    const text = JSON.stringify(line)
    if (options.logLevel === "Error" || options.logLevel === "Fatal") console.error(text)
    else if (options.logLevel === "Warn") console.warn(text)
    else console.log(text)
  })

/** Sets `error.type` on the served span from the tag of a typed failure an HTTP API turned into a response. */
export const errorTypeReporter: ErrorReporter.ErrorReporter = {
  [ErrorReporter.TypeId]: ErrorReporter.TypeId,
  report: ({ cause, fiber }) => {
    const span = fiber.getRef(ServerSpan)
    if (span === undefined) return
    for (const reason of cause.reasons) {
      const tag = reason._tag === "Fail" ? errorTag(reason.error) : undefined
      if (tag !== undefined) return span.attribute("error.type", tag)
    }
  }
}
