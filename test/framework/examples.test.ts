/** The examples run as their docs say: examples/hello, built only on `meshwork`. */
import { env } from "cloudflare:workers"
import { describe, expect, it } from "vitest"
import { expectProblem } from "../helpers.ts"

describe("examples/hello", () => {
  it("greets through the greeter's typed client and counts each name's visits in its Durable Object", async () => {
    const name = `Ada${crypto.randomUUID().slice(0, 8)}`
    const first = await env.HELLO.fetch(`http://hello/hello/${name}`)
    expect(first.status).toBe(200)
    expect(await first.json()).toEqual({ message: `Hello, ${name}!`, visits: 1 })
    const second = await env.HELLO.fetch(`http://hello/hello/${name}`)
    expect(await second.json()).toEqual({ message: `Hello, ${name}!`, visits: 2 })
  })

  it("answers anything else with a 404 problem", async () => {
    await expectProblem(await env.HELLO.fetch("http://hello/nowhere"), 404)
    await expectProblem(await env.HELLO.fetch("http://hello/hello/Ada", { method: "POST" }), 404)
  })
})
