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
import { FetchHttpClient, HttpClient } from "effect/http"
import { type HttpApi, HttpApiClient, type HttpApiGroup } from "effect/http-api"
import * as Bindings from "./Bindings.ts"

/** An HttpClient whose requests go to the service binding `binding`. */
export const httpClient = (binding: string) =>
  Effect.flatMap(Bindings.fetcher(binding), (upstream) =>
    HttpClient.HttpClient.pipe(
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
  binding: string
) =>
  Effect.flatMap(httpClient(binding), (client) =>
    HttpApiClient.makeWith(api, {
      httpClient: client,
      // Service bindings ignore the host; it only names the target in logs and traces.
      baseUrl: `http://${binding.toLowerCase()}.internal`
    }))
