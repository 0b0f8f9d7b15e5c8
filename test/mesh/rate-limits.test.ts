/** The gateway's rate limits as a client meets them: IETF RateLimit headers, 429 with Retry-After. */
import { expect, it } from "vitest"
import { expectProblem, gateway, signedIn } from "../helpers.ts"

it("puts RateLimit-Policy and RateLimit on every limited response, and answers 429 with Retry-After past the limit", async () => {
  const user = await signedIn()
  const head = () => gateway("/api/products", { method: "HEAD", headers: { authorization: `Bearer ${user.token}` } })
  for (const remaining of [2, 1, 0]) {
    const response = await head()
    expect(response.status).toBe(200)
    expect(response.headers.get("ratelimit-policy")).toBe('"tight";q=3;w=3600')
    expect(response.headers.get("ratelimit")).toMatch(new RegExp(`^"tight";r=${remaining};t=\\d+$`))
  }
  const refused = await gateway("/api/products", { headers: { authorization: `Bearer ${user.token}` }, method: "HEAD" })
  expect(refused.status).toBe(429)
  expect(Number(refused.headers.get("retry-after"))).toBeGreaterThan(0)
  expect(refused.headers.get("ratelimit")).toMatch(/^"tight";r=0;t=\d+$/)
  // Another client is counted on its own.
  const other = await signedIn()
  expect((await gateway("/api/products", { method: "HEAD", headers: { authorization: `Bearer ${other.token}` } })).status).toBe(200)
  // GET is under the "api" policy, not "tight".
  const get = await gateway("/api/products", { headers: { authorization: `Bearer ${user.token}` } })
  expect(get.headers.get("ratelimit-policy")).toBe('"api";q=100000;w=60')
  await get.text()
  await expectProblem(await gateway("/api/products", { method: "POST", headers: { authorization: "Bearer nope" } }), 401)
})
