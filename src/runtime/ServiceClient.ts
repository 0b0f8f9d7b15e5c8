/**
 * Typed clients for the mesh's internal services, derived from the same
 * `HttpApi` definition the service serves, sent over a service binding
 * (never the public internet).
 *
 * ```ts
 * export class UsersClient extends Context.Service<UsersClient, HttpApiClient.ForApi<typeof UsersApi>>()(
 *   "meshwork/services/users/UsersClient"
 * ) {
 *   static readonly layer = Layer.effect(UsersClient, ServiceClient.make(UsersApi, "USERS"))
 * }
 * ```
 *
 * A schema change in the API is then a compile error in every caller.
 */
import * as Duration from "effect/Duration"
import * as Effect from "effect/Effect"
import * as Layer from "effect/Layer"
import type { HttpClientResponse } from "effect/http"
import * as FetchHttpClient from "effect/http/FetchHttpClient"
import * as HttpClient from "effect/http/HttpClient"
import * as HttpClientError from "effect/http/HttpClientError"
import * as HttpClientRequest from "effect/http/HttpClientRequest"
import type { HttpApi, HttpApiGroup } from "effect/http-api"
import * as HttpApiClient from "effect/http-api/HttpApiClient"
import * as Bindings from "./Bindings.ts"
import { TraceState } from "./telemetry/TraceContext.ts"

/**
 * What a resilience policy does to each call: given one attempt (with its
 * timeout) and the request, the effect that makes the call, perhaps several
 * attempts of it (`Retries.policy` in src/layers/resilience/Retries.ts).
 */
export type Policy = (
  attempt: Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>,
  request: HttpClientRequest.HttpClientRequest
) => Effect.Effect<HttpClientResponse.HttpClientResponse, HttpClientError.HttpClientError>

export interface Options {
  /** Each attempt's timeout in ms; it aborts the request. Default: none. */
  readonly timeoutMs?: number | undefined
  /** Wraps every call, e.g. `Retries.policy("users", { attempts: 3 })`. Default: one attempt. */
  readonly policy?: Policy | undefined
}

const timedOut = (request: HttpClientRequest.HttpClientRequest, timeoutMs: number) =>
  new HttpClientError.HttpClientError({
    reason: new HttpClientError.TransportError({ request, description: `no answer within ${timeoutMs} ms` })
  })

/**
 * An HttpClient whose requests go to the service binding `binding`, each
 * attempt within `timeoutMs`, every call through `policy`. Effect's client
 * makes each request a client span and sends its `traceparent`; the
 * `tracestate` received with the request being served is handed on here.
 */
export const httpClient = (binding: string, options: Options = {}) =>
  Effect.flatMap(Bindings.fetcher(binding), (upstream) =>
    HttpClient.HttpClient.pipe(
      Effect.map(HttpClient.mapRequestEffect((request) =>
        Effect.withFiber((fiber) => {
          const tracestate = fiber.getRef(TraceState)
          return Effect.succeed(tracestate === undefined ? request : HttpClientRequest.setHeader(request, "tracestate", tracestate))
        })
      )),
      Effect.map(HttpClient.transform((effect, request) => {
        const timeoutMs = options.timeoutMs
        const attempt = timeoutMs === undefined ? effect : Effect.timeoutOrElse(effect, {
          duration: Duration.millis(timeoutMs),
          orElse: () => Effect.fail(timedOut(request, timeoutMs))
        })
        return options.policy === undefined ? attempt : options.policy(attempt, request)
      })),
      Effect.provide(FetchHttpClient.layer.pipe(
        Layer.provide(Layer.succeed(
          FetchHttpClient.Fetch,
          ((input, init) => upstream.fetch(input, init)) as typeof globalThis.fetch
        ))
      ))
    ))

/** A typed client of `api`, served by the Worker bound as `binding`. */
export const make = <ApiId extends string, Groups extends HttpApiGroup.Constraint>(
  api: HttpApi.HttpApi<ApiId, Groups>,
  binding: string,
  options: Options = {}
) =>
  Effect.flatMap(httpClient(binding, options), (client) =>
    HttpApiClient.makeWith(api, {
      httpClient: client,
      // Service bindings ignore the host; it only names the target in logs and traces.
      baseUrl: `http://${binding.toLowerCase()}.internal`
    }))
