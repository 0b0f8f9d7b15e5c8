/**
 * Record ids: UUIDv7 strings (RFC 9562). They sort by creation time, so the
 * id alone is a stable, chronological pagination key, and they read the
 * clock through Effect's `Clock`, so tests control them with `TestClock`.
 */
import * as Clock from "effect/Clock"
import * as Effect from "effect/Effect"
import * as Hex from "effect/encoding/Hex"

export const uuidv7: Effect.Effect<string> = Effect.map(Clock.currentTimeMillis, (millis) => {
  const bytes = crypto.getRandomValues(new Uint8Array(16))
  let time = millis
  for (let i = 5; i >= 0; i--) {
    bytes[i] = time % 256
    time = Math.floor(time / 256)
  }
  bytes[6] = (bytes[6]! & 0x0f) | 0x70
  bytes[8] = (bytes[8]! & 0x3f) | 0x80
  const h = Hex.encode(bytes)
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
})
