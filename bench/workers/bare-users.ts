/** The users hop of the hand-written chain: the same D1 query, hand-mapped to the same JSON. */
interface Env {
  readonly USERS_DB: D1Database
}

interface Row {
  readonly id: string
  readonly email: string
  readonly name: string
  readonly role: string
  readonly active: number
  readonly created_at: string
  readonly updated_at: string
}

export default {
  async fetch(request: Request, env: Env): Promise<Response> {
    const match = /^\/api\/users\/([^/]+)$/.exec(new URL(request.url).pathname)
    if (request.method !== "GET" || match === null) return new Response("Not Found", { status: 404 })
    const row = await env.USERS_DB.prepare("SELECT * FROM users WHERE id = ?").bind(match[1]).first<Row>()
    if (row === null) return Response.json({ title: "User not found" }, { status: 404 })
    return Response.json({
      id: row.id,
      email: row.email,
      name: row.name,
      role: row.role,
      active: row.active === 1,
      createdAt: row.created_at,
      updatedAt: row.updated_at
    })
  }
}
