/**
 * One mesh for the node project's tests that need a running one (the
 * browser tests, the CLI against a mesh), shared by their files: two
 * `wrangler dev` at once on one machine collide on wrangler's own sockets.
 *
 * Vitest runs every project's global setup before any test, so this one does
 * not wait for the mesh (about 20 s): it picks the port, starts the mesh in
 * the background and returns, and the files that need the mesh wait for it
 * with `meshUrl()` (test/node/mesh.ts). The workers project's tests run
 * meanwhile.
 */
import { mkdirSync, rmSync, writeFileSync } from "node:fs"
import { join } from "node:path"
import type { TestProject } from "vitest/node"
import { startLocalMesh } from "../../scripts/local-mesh.ts"
import { root } from "../../scripts/mesh.ts"
import { freePort } from "../../scripts/redis.ts"

declare module "vitest" {
  export interface ProvidedContext {
    /** The shared mesh, `http://127.0.0.1:<port>`, once `meshStatus` says it is up. */
    readonly meshUrl: string
    /** A file holding `{ "up": true }` once the mesh is up, or `{ "error": "..." }` if it could not start. */
    readonly meshStatus: string
  }
}

export default async function setup(project: TestProject) {
  const port = await freePort()
  const status = join(root, `.build/node-tests-mesh-${process.pid}.json`)
  mkdirSync(join(root, ".build"), { recursive: true })
  writeFileSync(status, "{}")
  // At low priority: it has until the workers project's tests end, which it should not slow down.
  const starting = startLocalMesh(join(root, `.build/node-tests-state-${process.pid}`), { port, nice: 10 }).then(
    (mesh) => {
      writeFileSync(status, JSON.stringify({ up: true }))
      return mesh
    },
    (error: unknown) => {
      writeFileSync(status, JSON.stringify({ error: String(error) }))
      return undefined
    }
  )
  project.provide("meshUrl", `http://127.0.0.1:${port}`)
  project.provide("meshStatus", status)
  return async () => {
    await (await starting)?.stop()
    rmSync(status, { force: true })
  }
}
