/** The node project's shared mesh (test/node/mesh-setup.ts), once it is up. */
import { readFileSync } from "node:fs"
import { setTimeout as sleep } from "node:timers/promises"
import { inject } from "vitest"

/** Waits for the shared mesh and returns its base URL; throws with its log if it could not start. */
export const meshUrl = async (): Promise<string> => {
  for (;;) {
    const status = JSON.parse(readFileSync(inject("meshStatus"), "utf8")) as { up?: boolean; error?: string }
    if (status.up === true) return inject("meshUrl")
    if (status.error !== undefined) throw new Error(status.error)
    await sleep(200)
  }
}
