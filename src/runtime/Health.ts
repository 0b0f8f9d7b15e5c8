/**
 * The health endpoint every internal Worker serves at `GET /health`. It is
 * not under `/api`, so the gateway never routes a client to it; the
 * gateway's own `/health` aggregates these through the router.
 */
import { Effect, Schema } from "effect"
import { HttpApiEndpoint, HttpApiGroup } from "effect/http-api"

export const ServiceHealth = Schema.Struct({
  service: Schema.String,
  status: Schema.Literal("ok")
})

export class HealthGroup extends HttpApiGroup.make("health", { topLevel: true }).add(
  HttpApiEndpoint.get("health", "/health", { success: ServiceHealth })
) {}

export const healthy = (service: string) => () => Effect.succeed({ service, status: "ok" as const })
