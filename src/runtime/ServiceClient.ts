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
import { Effect, Layer } from "effect"
import { FetchHttpClient, HttpClient, HttpClientError, HttpClientRequest, type HttpClientResponse } from "effect/http"
import { type HttpApi, HttpApiClient, type HttpApiGroup } from "effect/http-api"
import * as Retry from "../layers/Retry.ts"
import * as Telemetry from "../layers/Telemetry.ts"
import * as Bindings from "./Bindings.ts"
import * as Problem from "./Problem.ts"

export interface Options {
  /** Each attempt's timeout in ms; it aborts the request. */
  readonly timeoutMs?: number | undefined
  /** Retry settings, used when the calling Worker's layer has `Retries` (src/layers/Retry.ts). */
  readonly retry?: Retry.RetrySettings | undefined
}

const httpClientResponse: Retry.Answer<HttpClientResponse.HttpClientResponse> = {
  status: (response) => response.status,
  retryAfter: (response) => response.headers["retry-after"],
  release: () => {}
}

/**
 * An HttpClient whose requests go to the service binding `binding`, with the
 * same timeout and retry policy as the proxies' routes. Effect's client
 * makes each request a client span and sends its `traceparent`; the
 * `tracestate` received with the request being served is handed on here.
 */
export const httpClient = (binding: string, options: Options = {}) =>
  Effect.flatMap(Bindings.fetcher(binding), (upstream) =>
    HttpClient.HttpClient.pipe(
      Effect.map(HttpClient.mapRequestEffect((request) =>
        Effect.withFiber((fiber) => {
          const tracestate = fiber.getRef(Telemetry.TraceState)
          return Effect.succeed(tracestate === undefined ? request : HttpClientRequest.setHeader(request, "tracestate", tracestate))
        })
      )),
      Effect.map(HttpClient.transform((effect, request) =>
        Retry.withRetries({
          upstream: binding.toLowerCase(),
          method: request.method,
          hasIdempotencyKey: request.headers["idempotency-key"] !== undefined,
          timeoutMs: options.timeoutMs,
          retry: options.retry,
          attempt: effect,
          answer: httpClientResponse,
          unreachable: (error) => HttpClientError.isHttpClientError(error) && error.reason._tag === "TransportError"
        }).pipe(Effect.mapError((error) =>
          error instanceof Problem.GatewayTimeout
            ? new HttpClientError.HttpClientError({
              reason: new HttpClientError.TransportError({ request, description: error.detail ?? "timed out" })
            })
            : error
        ))
      )),
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
