/**
 * The API's description at the gateway: the OpenAPI document is public and
 * cacheable, marks the public routes open and the rest behind a token or an
 * API key, answers problems as problem+json, and every operation it lists is
 * one the gateway serves. (It is validated against the OpenAPI 3.1 schema,
 * and compared with docs/api.md, in test/node/api-docs.test.ts; the page is
 * driven in a browser there too.)
 */
import { beforeAll, describe, expect, it } from "vitest"
import { expectProblem, gateway, signedIn } from "../helpers.ts"

interface Operation {
  readonly operationId: string
  readonly security?: ReadonlyArray<Record<string, ReadonlyArray<string>>>
  readonly responses: Record<string, { readonly content?: Record<string, unknown> }>
}
interface Document {
  readonly openapi: string
  readonly paths: Record<string, Record<string, Operation>>
  readonly components: { readonly securitySchemes: Record<string, Record<string, string>> }
}

let document: Document
let adminToken = ""
beforeAll(async () => {
  const response = await gateway("/api/openapi.json")
  expect(response.status).toBe(200)
  document = await response.json() as Document
  adminToken = (await signedIn("admin")).token
})

const operations = () =>
  Object.entries(document.paths).flatMap(([path, item]) => Object.entries(item).map(([method, operation]) => ({ path, method: method.toUpperCase(), operation })))

describe("GET /api/openapi.json", () => {
  it("is public, JSON, and cacheable: a strong ETag and a 304 for it", async () => {
    const response = await gateway("/api/openapi.json")
    expect(response.headers.get("content-type")).toBe("application/json")
    expect(response.headers.get("cache-control")).toBe("public, max-age=300")
    const etag = response.headers.get("etag")!
    expect(etag).toMatch(/^"[0-9a-f]{32}"$/)
    const again = await gateway("/api/openapi.json", { headers: { "if-none-match": etag } })
    expect(again.status).toBe(304)
    expect(await again.text()).toBe("")
    const head = await gateway("/api/openapi.json", { method: "HEAD" })
    expect(head.status).toBe(200)
    expect(head.headers.get("etag")).toBe(etag)
  })

  it("is OpenAPI 3.1 with both ways in: bearer tokens and API keys", () => {
    expect(document.openapi).toBe("3.1.0")
    expect(document.components.securitySchemes).toMatchObject({
      bearer: { type: "http", scheme: "bearer", bearerFormat: "JWT" },
      apiKey: { type: "apiKey", in: "header", name: "Authorization" }
    })
  })

  it("marks the gateway's public routes open, and every other /api route behind a token or a key", () => {
    const open = operations().filter(({ operation }) => operation.security?.length === 0).map(({ method, path }) => `${method} ${path}`)
    expect(open.sort()).toEqual([
      "GET /api/auth/.well-known/jwks.json",
      "GET /api/docs",
      "GET /api/openapi.json",
      "GET /health",
      "POST /api/auth/login",
      "POST /api/auth/refresh"
    ])
    for (const { path, operation } of operations()) {
      if (operation.security?.length !== 0) expect(operation.security, path).toEqual([{ bearer: [] }, { apiKey: [] }])
    }
  })

  it("lists every service's routes and the gateway's own, with problem+json errors", () => {
    const paths = Object.keys(document.paths)
    for (const prefix of ["/api/auth", "/api/users", "/api/products", "/api/products/imports", "/api/sessions", "/api/admin"]) {
      expect(paths.some((path) => path.startsWith(prefix)), prefix).toBe(true)
    }
    // The services' own /health (inside the mesh) is not the public one.
    expect(document.paths["/health"]?.["get"]?.operationId).toBe("mesh.health")
    for (const { path, method, operation } of operations()) {
      if (path === "/health") continue
      const errors = Object.entries(operation.responses).filter(([status]) => Number(status) >= 400)
      expect(errors.length, `${method} ${path}`).toBeGreaterThan(0)
      for (const [status, response] of errors) {
        expect(Object.keys(response.content ?? {}), `${method} ${path} ${status}`).toEqual(["application/problem+json"])
      }
    }
  })

  it("lists only routes the gateway serves: each answers something other than 'no such route'", async () => {
    const unserved: Array<string> = []
    for (const { path, method } of operations()) {
      const concrete = path.replace(/\{[^}]+\}/g, "zz-probe")
      const hasBody = method === "POST" || method === "PUT" || method === "PATCH"
      const response = await gateway(concrete, {
        method,
        headers: { authorization: `Bearer ${adminToken}`, ...(hasBody ? { "content-type": "application/json" } : {}) },
        ...(hasBody ? { body: "{}" } : {})
      })
      const text = await response.text()
      const detail = response.headers.get("content-type") === "application/problem+json" ? String(JSON.parse(text).detail ?? "") : ""
      if (response.status === 405 || /^No (route for|service serves|admin resource|document)/.test(detail)) {
        unserved.push(`${method} ${path}: ${response.status} ${detail}`)
      }
    }
    expect(unserved).toEqual([])
  })

  it("needs a token for anything but reading it", async () => {
    await expectProblem(await gateway("/api/openapi.json", { method: "POST" }), 401)
    await expectProblem(await gateway("/api/openapi.json", { method: "DELETE", headers: { authorization: `Bearer ${adminToken}` } }), 405)
  })
})

describe("GET /api/docs", () => {
  it("is a page that loads Scalar from the gateway's own origin (the docs Worker behind it), under a CSP that keeps everything there", async () => {
    const response = await gateway("/api/docs")
    expect(response.status).toBe(200)
    expect(response.headers.get("content-type")).toBe("text/html; charset=utf-8")
    expect(response.headers.get("cache-control")).toBe("public, max-age=300")
    expect(response.headers.get("content-security-policy")).toContain("connect-src 'self'")
    const html = await response.text()
    const script = /<script src="([^"]+)"><\/script>/.exec(html)?.[1]
    expect(script).toBe("/api/docs/scalar.js")
    expect(html).not.toMatch(/https?:\/\//)
    expect(html).toContain(`"url":"/api/openapi.json"`)

    const js = await gateway(script!)
    expect(js.status).toBe(200)
    expect(js.headers.get("content-type")).toBe("text/javascript; charset=utf-8")
    expect(js.headers.get("cache-control")).toBe("public, max-age=3600")
    expect((await js.text()).length).toBeGreaterThan(1_000_000)
    // Revalidation is a 304 without the 3 MB.
    const again = await gateway(script!, { headers: { "if-none-match": js.headers.get("etag")! } })
    expect(again.status).toBe(304)
  })

  it("answers an unknown file under /api/docs with 404, and nothing but GET and HEAD", async () => {
    await expectProblem(await gateway("/api/docs/other.js", { headers: { authorization: `Bearer ${adminToken}` } }), 404)
    await expectProblem(await gateway("/api/docs", { method: "PUT", headers: { authorization: `Bearer ${adminToken}` } }), 405)
  })
})
