/**
 * The dependency rules (scripts/architecture.ts) hold for the project, and
 * the check itself catches each kind of break.
 */
import { describe, expect, it } from "vitest"
import { barrelsOf, check, importsOf, projectSources, type SourceFile } from "../../scripts/architecture.ts"
import { root } from "../../scripts/mesh.ts"

describe("the project's imports", () => {
  it("point one way, reach the framework through `meshwork` only, and have no cycle", () => {
    const files = projectSources(root)
    expect(files.length).toBeGreaterThan(50)
    expect(check(files).map((violation) => violation.message)).toEqual([])
  })
})

describe("the check", () => {
  const file = (path: string, ...imports: Array<string>): SourceFile => ({ path, imports })

  it("reads static, re-exported, side-effect and dynamic imports, not ones in comments", () => {
    const text = `
      import { a } from "./a.ts"
      import type { B } from "../b.ts"
      export { c } from "./c.ts"
      export * as D from "./d.ts"
      import "./e.ts"
      const f = await import("./f.ts")
      // import { g } from "./g.ts"
      /* import { h } from "./h.ts" */
    `
    expect(importsOf(text)).toEqual(["./a.ts", "../b.ts", "./c.ts", "./d.ts", "./e.ts", "./f.ts"])
  })

  it("refuses the runtime importing a policy, and a policy importing a service", () => {
    const violations = check([
      file("src/runtime/Worker.ts", "../layers/resilience/Retries.ts"),
      file("src/layers/resilience/Retries.ts", "../../services/users/api.ts"),
      file("src/services/users/api.ts")
    ])
    expect(violations.map((violation) => violation.rule)).toEqual(["direction", "direction"])
  })

  it("refuses a service or an example reaching past the public surface", () => {
    const violations = check([
      file("src/services/users/worker.ts", "../../runtime/Worker.ts", "meshwork"),
      file("examples/hello/worker.ts", "../../src/layers/state/Locks.ts", "../../src/services/users/api.ts"),
      file("src/runtime/Worker.ts"),
      file("src/layers/state/Locks.ts"),
      file("src/services/users/api.ts"),
      file("src/index.ts", "./runtime/Worker.ts")
    ])
    expect(violations.map((violation) => violation.rule)).toEqual(["public-surface", "public-surface", "public-surface"])
  })

  it("refuses the framework importing itself by name", () => {
    const violations = check([file("src/layers/edge/EdgeCache.ts", "meshwork"), file("src/index.ts")])
    expect(violations.map((violation) => violation.rule)).toEqual(["direction"])
  })

  it("refuses values from an Effect barrel, and lets types and modules by path through", () => {
    const text = `
      import { Effect, Layer } from "effect"
      import { HttpApiBuilder } from "effect/http-api"
      import type { Duration } from "effect"
      import type { HttpApiClient } from "effect/http-api"
      import * as Schema from "effect/Schema"
      import * as HttpRouter from "effect/http/HttpRouter"
    `
    expect(barrelsOf(text)).toEqual(["effect", "effect/http-api"])
    const violations = check([{ path: "src/runtime/Worker.ts", imports: [], barrels: barrelsOf(text) }])
    expect(violations.map((violation) => violation.rule)).toEqual(["barrel", "barrel"])
  })

  it("finds a cycle, however long", () => {
    const violations = check([
      file("src/layers/routing/A.ts", "./B.ts"),
      file("src/layers/routing/B.ts", "../state/C.ts"),
      file("src/layers/state/C.ts", "../routing/A.ts")
    ])
    expect(violations).toEqual([{
      rule: "cycle",
      message: "import cycle: src/layers/routing/A.ts -> src/layers/routing/B.ts -> src/layers/state/C.ts -> src/layers/routing/A.ts"
    }])
  })
})
