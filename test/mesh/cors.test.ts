/**
 * CORS at the reference gateway, with its own CORS_ROUTES (wrangler.toml):
 * browsers on the local development origins may call /api, anyone may read
 * the OpenAPI document, and preflights never leave the gateway.
 */
import { describe, expect, it } from "vitest"
import { expectProblem, gateway, signedIn } from "../helpers.ts"

const app = "http://localhost:5173"

const preflight = (path: string, origin: string, method = "GET", headers = "authorization") =>
  gateway(path, { method: "OPTIONS", headers: { origin, "access-control-request-method": method, "access-control-request-headers": headers } })

const corsHeaders = (response: Response) => [...response.headers.keys()].filter((name) => name.startsWith("access-control-"))

describe("CORS at the gateway", () => {
  it("answers a preflight itself: no token needed, and no service asked (the path serves nothing)", async () => {
    for (const path of ["/api/users", "/api/no-such-service/x"]) {
      const response = await preflight(path, app, "PATCH", "authorization, content-type, if-match")
      expect(response.status).toBe(204)
      expect(response.headers.get("access-control-allow-origin")).toBe(app)
      expect(response.headers.get("access-control-allow-methods")).toContain("PATCH")
      expect(response.headers.get("access-control-allow-headers")).toContain("if-match")
      expect(response.headers.get("access-control-max-age")).toBe("600")
      expect(await response.text()).toBe("")
    }
  })

  it("refuses a preflight from another origin with 403 and no CORS header", async () => {
    const response = await preflight("/api/users", "https://evil.example")
    await expectProblem(response, 403)
    expect(corsHeaders(response)).toEqual([])
  })

  it("a signed-in request from the app gets its origin and the headers it may read", async () => {
    const { token } = await signedIn("admin")
    const response = await gateway("/api/users?limit=1", { headers: { origin: app, authorization: `Bearer ${token}` } })
    expect(response.status).toBe(200)
    expect(response.headers.get("access-control-allow-origin")).toBe(app)
    expect(response.headers.get("access-control-expose-headers")).toContain("ratelimit")
    expect(response.headers.get("vary")).toContain("Origin")
  })

  it("a 401 reaches the page too, with its WWW-Authenticate readable", async () => {
    const response = await gateway("/api/users", { headers: { origin: app } })
    await expectProblem(response, 401)
    expect(response.headers.get("access-control-allow-origin")).toBe(app)
    expect(response.headers.get("access-control-expose-headers")).toContain("www-authenticate")
  })

  it("another origin is answered without CORS headers, so its page cannot read the answer", async () => {
    const response = await gateway("/api/auth/.well-known/jwks.json", { headers: { origin: "https://evil.example" } })
    expect(response.status).toBe(200)
    expect(corsHeaders(response)).toEqual([])
    expect(response.headers.get("vary")).toContain("Origin")
  })

  it("anyone may read the OpenAPI document", async () => {
    const response = await gateway("/api/openapi.json", { headers: { origin: "https://editor.example" } })
    expect(response.headers.get("access-control-allow-origin")).toBe("*")
  })
})
