/**
 * The far end of one internal hop, reachable both ways over the same service
 * binding: HTTP (`fetch`, a JSON answer) and Workers RPC (`user`, the same
 * object, structured-cloned). See hop-client.ts.
 */
import { WorkerEntrypoint } from "cloudflare:workers"

const user = (id: string) => ({ id, email: `${id}@example.com`, name: "Bench User", role: "user", active: true, tags: ["bench"] })

export default class HopServer extends WorkerEntrypoint {
  override fetch(request: Request): Response {
    const id = new URL(request.url).pathname.slice("/users/".length)
    return Response.json(user(id))
  }

  user(id: string) {
    return user(id)
  }
}
