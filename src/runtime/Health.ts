/**
 * The health endpoint every internal Worker serves at `GET /health`. It is
 * not under `/api`, so the gateway never routes a client to it; a proxy's
 * detailed report (HealthReport) aggregates these.
 *
 * `healthy(service)` answers that the Worker runs. `ready(service, checks)`
 * also runs each readiness check (a D1 query, a Durable Object call), in
 * parallel and each within a second: 200 `status: "ok"` when every check
 * passed, 503 `status: "degraded"` naming the checks that did not.
 *
 * ```ts
 * handlers.handle("health", Health.ready("users", { d1: Health.d1("USERS_DB") }))
 * ```
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Schema from "effect/Schema"
import * as HttpApiEndpoint from "effect/http-api/HttpApiEndpoint"
import * as HttpApiGroup from "effect/http-api/HttpApiGroup"
import * as HttpApiSchema from "effect/http-api/HttpApiSchema"
import * as Bindings from "./Bindings.ts"

/** The outcome of one readiness check. */
export const Check = Schema.Struct({
  status: Schema.Literals(["up", "down"]),
  latencyMs: Schema.optionalKey(Schema.Number),
  detail: Schema.optionalKey(Schema.String)
})
export type Check = typeof Check.Type

const fields = {
  service: Schema.String,
  checks: Schema.optionalKey(Schema.Record(Schema.String, Check))
}

export const ServiceHealth = Schema.Struct({ ...fields, status: Schema.Literal("ok") })
/** A Worker whose readiness checks did not all pass: answered with 503. */
export const ServiceDegraded = Schema.Struct({ ...fields, status: Schema.Literal("degraded") }).pipe(HttpApiSchema.status(503))
export type ServiceReport = typeof ServiceHealth.Type | typeof ServiceDegraded.Type

export class HealthGroup extends HttpApiGroup.make("health", { topLevel: true }).add(
  HttpApiEndpoint.get("health", "/health", { success: [ServiceHealth, ServiceDegraded] })
) {}

export const healthy = (service: string) => () => Effect.succeed<ServiceReport>({ service, status: "ok" })

/** How long one readiness check may take before it counts as down. */
export const checkTimeout = Duration.seconds(1)

/** Runs one check: never fails; a failure (logged) or a timeout is `down`. */
const run = <R>(name: string, check: Effect.Effect<unknown, unknown, R>) =>
  Effect.gen(function*() {
    const started = Date.now()
    yield* check
    return { status: "up", latencyMs: Date.now() - started } satisfies Check as Check
  }).pipe(
    Effect.timeoutOrElse({
      duration: checkTimeout,
      orElse: () => Effect.succeed<Check>({ status: "down", detail: `no answer within ${Duration.format(checkTimeout)}` })
    }),
    Effect.catchCause((cause) =>
      Effect.as(Effect.logWarning(`Readiness check ${name} failed`, cause), { status: "down", detail: "failed" } satisfies Check as Check)
    )
  )

/**
 * A health handler that runs `checks` (by name) on each request. Details of a
 * failure are logged, not reported: the report says which check failed.
 */
export const ready = <R>(service: string, checks: Readonly<Record<string, Effect.Effect<unknown, unknown, R>>>) => () =>
  Effect.map(
    Effect.forEach(Object.entries(checks), ([name, check]) => Effect.map(run(name, check), (result) => [name, result] as const), {
      concurrency: "unbounded"
    }),
    (results): ServiceReport => {
      const reported = Object.fromEntries(results)
      return results.every(([, result]) => result.status === "up")
        ? { service, status: "ok", checks: reported }
        : { service, status: "degraded", checks: reported }
    }
  )

/** A readiness check of the D1 database bound as `binding`: one query to it. */
export const d1 = (binding: string) =>
  Effect.flatMap(Bindings.d1(binding), (db) => Effect.tryPromise(() => db.prepare("SELECT 1").first()))
