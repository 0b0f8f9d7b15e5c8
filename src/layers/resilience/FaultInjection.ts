/**
 * Fault injection, to exercise retries, timeouts and breakers locally.
 *
 * A route of the `ROUTES` table may carry `faults`:
 *
 * ```toml
 * faults = { delayPercent = 10, delayMs = 1500, abortPercent = 5, abortStatus = 503 }
 * ```
 *
 * Each attempt to reach that upstream is then, at random, delayed by `delayMs`
 * before it is sent, or answered with `abortStatus` without being sent. Faults
 * come from configuration only, never from anything a client sends, and only
 * in a Worker whose layer has `FaultInjection.layer` and whose var
 * `FAULT_INJECTION` is `true` (the router has the layer; the var is off unless
 * set, for example in a local `.dev.vars`).
 */
import * as Config from "effect/Config"
import * as Context from "effect/Context"
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import * as Random from "effect/Random"
import * as Schema from "effect/Schema"

const Percent = Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 100 }))

export const FaultSettings = Schema.Struct({
  delayPercent: Schema.optionalKey(Percent),
  delayMs: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 600_000 }))),
  abortPercent: Schema.optionalKey(Percent),
  abortStatus: Schema.optionalKey(Schema.Int.check(Schema.isBetween({ minimum: 400, maximum: 599 })))
})
export type FaultSettings = typeof FaultSettings.Type

/** Whether route `faults` settings take effect in this Worker. */
export class FaultInjection extends Context.Service<FaultInjection, { readonly enabled: boolean }>()(
  "meshwork/layers/resilience/FaultInjection"
) {
  /** On when the var `FAULT_INJECTION` is `true`; off by default. */
  static readonly layer = Layer.effect(
    FaultInjection,
    Effect.map(Config.Boolean("FAULT_INJECTION").pipe(Config.withDefault(false)), (enabled) => ({ enabled }))
  )
}

/** Its own problem type: `about:blank` would have to carry the status's own title (RFC 9457, section 4.2.1). */
const aborted = (service: string, status: number) =>
  new Response(
    JSON.stringify({ type: "urn:meshwork:problem:injected-fault", status, title: "Injected fault", detail: `Fault injected for ${service}` }),
    { status, headers: { "content-type": "application/problem+json" } }
  )

/** `attempt`, with the route's faults injected when `FaultInjection` is on. */
export const inject = <E, R>(
  service: string,
  settings: FaultSettings | undefined,
  attempt: Effect.Effect<Response, E, R>
): Effect.Effect<Response, E, R> =>
  settings === undefined
    ? attempt
    : Effect.flatMap(Effect.serviceOption(FaultInjection), (on) =>
      on._tag === "None" || !on.value.enabled
        ? attempt
        : Effect.gen(function*() {
          if ((yield* Random.next) * 100 < (settings.abortPercent ?? 0)) {
            return aborted(service, settings.abortStatus ?? 503)
          }
          if ((yield* Random.next) * 100 < (settings.delayPercent ?? 0)) {
            yield* Effect.sleep(Duration.millis(settings.delayMs ?? 1_000))
          }
          return yield* attempt
        }))
