/**
 * One mesh for the node project's tests that need a running one (the
 * browser tests, the CLI against a mesh): started once, beside the workers
 * project's tests, and stopped at the end. Two `wrangler dev` at once on one
 * machine collide on wrangler's own sockets, so the files share this one.
 */
import { join } from "node:path"
import type { TestProject } from "vitest/node"
import { startLocalMesh } from "../../scripts/local-mesh.ts"
import { root } from "../../scripts/mesh.ts"

declare module "vitest" {
  export interface ProvidedContext {
    /** The shared mesh, `http://127.0.0.1:<port>`. */
    readonly meshUrl: string
  }
}

export default async function setup(project: TestProject) {
  const mesh = await startLocalMesh(join(root, `.build/node-tests-state-${process.pid}`))
  project.provide("meshUrl", mesh.base)
  return () => mesh.stop()
}
