/**
 * A throwaway `redis-server` on a free port of 127.0.0.1, for the tests that
 * need a real Redis (no persistence, killed with this process). Undefined
 * when `redis-server` is not installed.
 */
import { spawn, spawnSync } from "node:child_process"
import { createServer, Socket } from "node:net"

export const installHint = "apt-get install redis-server"

/** A TCP port nothing listens on now, on 127.0.0.1. */
export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => resolve(typeof address === "object" && address !== null ? address.port : 0))
    })
  })

const ping = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = new Socket()
    const done = (answer: boolean) => {
      socket.destroy()
      resolve(answer)
    }
    socket.setTimeout(500, () => done(false))
    socket.once("error", () => done(false))
    socket.connect(port, "127.0.0.1", () => socket.write("PING\r\n"))
    socket.once("data", (data) => done(String(data).startsWith("+PONG")))
  })

export const isInstalled = (): boolean => spawnSync("redis-server", ["--version"], { stdio: "ignore" }).status === 0

/** Starts a server and waits until it answers PING (at most 5 s). */
export const startRedis = async (): Promise<{ readonly url: string; readonly stop: () => void } | undefined> => {
  if (!isInstalled()) return undefined
  const port = await freePort()
  const child = spawn(
    "redis-server",
    ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--loglevel", "warning"],
    { stdio: "ignore" }
  )
  // Never what keeps the test process alive: it goes when the process does.
  child.unref()
  const stop = () => void child.kill()
  process.once("exit", stop)
  for (let attempt = 0; attempt < 50; attempt++) {
    if (await ping(port)) return { url: `redis://127.0.0.1:${port}`, stop }
    await new Promise((resolve) => setTimeout(resolve, 100))
  }
  stop()
  throw new Error(`redis-server did not answer on port ${port} within 5 s`)
}
