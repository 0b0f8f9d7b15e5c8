/**
 * A mesh of its own for a tool or a test: `npm start` on a free port with a
 * fresh state directory, resolved once it is up, stopped (and its state
 * removed) by `stop`. The README tour and the browser tests run on one.
 */
import { spawn } from "node:child_process"
import { rmSync } from "node:fs"
import { setPriority } from "node:os"
import { join } from "node:path"
import { root } from "./mesh.ts"
import { freePort } from "./redis.ts"

export interface LocalMesh {
  /** `http://127.0.0.1:<port>` */
  readonly base: string
  readonly stop: () => Promise<void>
}

/**
 * Starts the mesh with its state in `state` (deleted first, and again on stop), on `port` or a
 * free one. `nice` lowers its CPU priority (and that of wrangler and workerd, which inherit it),
 * for a mesh started in the background of other work.
 */
export const startLocalMesh = async (
  state: string,
  options: { readonly timeoutMs?: number; readonly port?: number; readonly nice?: number } = {}
): Promise<LocalMesh> => {
  const port = options.port ?? await freePort()
  const child = spawn(process.execPath, [join(root, "scripts/start.ts"), "--fresh", "--state", state, "--port", String(port)], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"]
  })
  // At once, before it spawns wrangler: its children inherit the priority.
  if (options.nice !== undefined && child.pid !== undefined) setPriority(child.pid, options.nice)
  let log = ""
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the mesh did not start in ${(options.timeoutMs ?? 180_000) / 1000} s:\n${log}`)), options.timeoutMs ?? 180_000)
    const read = (chunk: Buffer) => {
      log += chunk
      if (log.includes("Meshwork is up")) {
        clearTimeout(timer)
        resolve()
      }
    }
    child.stdout.on("data", read)
    child.stderr.on("data", read)
    child.on("exit", (code) => {
      clearTimeout(timer)
      reject(new Error(`npm start exited with ${code}:\n${log}`))
    })
  })
  return {
    base: `http://127.0.0.1:${port}`,
    stop: () =>
      new Promise<void>((resolve) => {
        const done = () => {
          rmSync(state, { recursive: true, force: true })
          resolve()
        }
        if (child.exitCode !== null) return done()
        child.once("exit", done)
        child.kill("SIGINT")
      })
  }
}
