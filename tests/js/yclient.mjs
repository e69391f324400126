// A Node.js Yjs client that is not ours: y-websocket's WebsocketProvider over the `ws` package.
//
// Joins a conversation's room on a relay, waits until it is synced and holds every text in
// --expect, prints the posts it sees, appends a post in our layout as the member whose Ed25519
// private key (32-byte seed, hex) is --key (bucket "<member>/0", entry "s": 0, chained and with
// its signed stream head, as protocols/gigi-sync-v1.md appendix A.2 says), makes sure the relay
// holds it (a second client in the same room reads it back), and exits 0. Any error or a
// timeout ends it with a message and a non-zero code.
//
// Output, one JSON object a line on stdout:
//   {"event":"synced"}
//   {"event":"post","author":"...","text":"..."}        once per post seen, in display order
//   {"event":"appended","author":"...","id":"...","text":"..."}
//   {"event":"confirmed","id":"..."}                    a fresh client read it from the relay
//   {"event":"done"}
//
// Usage: node yclient.mjs --url=ws://127.0.0.1:PORT --room=ROOM --token=TOKEN --key=SEED_HEX
//                         --nickname=NICK --send=TEXT [--expect=TEXT]... [--timeout=SECONDS]
// (give values with "=": a room name or an id may start with "-")

import { createHash, createPrivateKey, createPublicKey, randomBytes, sign } from 'node:crypto'
import { parseArgs } from 'node:util'
import WebSocket from 'ws'
import { WebsocketProvider } from 'y-websocket'
import * as Y from 'yjs'

const TICKS_PER_MS = 1000 // gigi_crdt.model.clock: hybrid timestamps count microsecond ticks

function fail (message) {
  process.stderr.write(`yclient: ${message}\n`)
  process.exit(1)
}

process.on('uncaughtException', (error) => fail(`uncaught: ${error?.stack ?? error}`))
process.on('unhandledRejection', (error) => fail(`unhandled rejection: ${error?.stack ?? error}`))

function emit (record) {
  process.stdout.write(JSON.stringify(record) + '\n')
}

let options
try {
  options = parseArgs({
    options: {
      url: { type: 'string' },
      room: { type: 'string' },
      token: { type: 'string' },
      key: { type: 'string' },
      nickname: { type: 'string', default: 'yjs' },
      send: { type: 'string' },
      expect: { type: 'string', multiple: true, default: [] },
      timeout: { type: 'string', default: '20' }
    },
    strict: true
  }).values
} catch (error) {
  fail(error.message)
}
for (const name of ['url', 'room', 'token', 'key', 'send']) {
  if (!options[name]) fail(`--${name} is required`)
}
const seconds = Number(options.timeout)
if (!(seconds > 0)) fail(`--timeout must be a positive number of seconds, not ${options.timeout}`)
setTimeout(() => fail(`timed out after ${seconds} s`), seconds * 1000)

/** A Doc joined to the room; resolves once the first sync with the relay is done. */
function join () {
  const doc = new Y.Doc()
  const provider = new WebsocketProvider(options.url, options.room, doc, {
    params: { token: options.token },
    WebSocketPolyfill: WebSocket,
    disableBc: true
  })
  // No retries: a refusal (HTTP 401 for a wrong token) or a dropped socket ends the run.
  provider.on('connection-error', (event) => {
    fail(`cannot connect to ${provider.url.replace(/token=[^&]*/, 'token=…')}: ${event?.message ?? event}`)
  })
  provider.on('connection-close', (event) => {
    if (event !== null) fail(`the relay closed the connection: code ${event.code} ${event.reason ?? ''}`)
  })
  return new Promise((resolve) => {
    provider.once('sync', () => resolve({ doc, provider }))
  })
}

/** Every post in the document, read as plain data, in display order (timestamp, then id). */
function posts (doc) {
  const found = []
  for (const [key, bucket] of doc.getMap('streams').entries()) {
    if (!(bucket instanceof Y.Array)) continue
    const author = key.slice(0, key.lastIndexOf('/'))
    for (const value of bucket.toArray()) {
      const op = storedFields(value)
      if (op !== null && typeof op === 'object' && op.o === 'post') found.push({ author, op })
    }
  }
  return found.sort((a, b) => a.op.t - b.op.t || (a.op.i < b.op.i ? -1 : a.op.i > b.op.i ? 1 : 0))
}

/** A stream entry's fields: stored as JSON text (a map in documents written before 2026-11-28). */
function storedFields (value) {
  if (typeof value !== 'string') return value
  try {
    return JSON.parse(value)
  } catch {
    return null
  }
}

/** Resolves once ``condition()`` holds, checked after every change of ``doc``. */
function until (doc, condition) {
  return new Promise((resolve) => {
    const check = () => {
      if (condition()) {
        doc.off('update', check)
        resolve()
      }
    }
    doc.on('update', check)
    check()
  })
}

function texts (doc) {
  return posts(doc).map(({ op }) => op.c?.text)
}

const { doc, provider } = await join()
emit({ event: 'synced' })
await until(doc, () => options.expect.every((text) => texts(doc).includes(text)))
for (const { author, op } of posts(doc)) emit({ event: 'post', author, text: op.c?.text ?? null })

// -- signed streams (appendix A.2), written from the spec, not from our Python code --------

const sha256 = (...parts) => createHash('sha256').update(Buffer.concat(parts.map((p) => Buffer.from(p)))).digest()
const link16 = (...parts) => sha256(...parts).subarray(0, 16)

/** JSON with sorted keys, no spaces: what commitments and signatures are made over. */
function canonical (value) {
  if (Array.isArray(value)) return `[${value.map(canonical).join(',')}]`
  if (value !== null && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${canonical(value[k])}`).join(',')}}`
  }
  return JSON.stringify(value)
}

/** Lowercase RFC 4648 base32 without padding. */
function base32 (bytes) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz234567'
  let bits = 0
  let value = 0
  let out = ''
  for (const byte of bytes) {
    value = (value << 8) | byte
    bits += 8
    while (bits >= 5) {
      out += alphabet[(value >>> (bits - 5)) & 31]
      bits -= 5
    }
  }
  return bits > 0 ? out + alphabet[(value << (5 - bits)) & 31] : out
}

const PKCS8_ED25519 = Buffer.from('302e020100300506032b657004220420', 'hex')
const privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_ED25519, Buffer.from(options.key, 'hex')]), format: 'der', type: 'pkcs8' })
const publicKey = createPublicKey(privateKey).export({ format: 'der', type: 'spki' }).subarray(-32)
const member = base32(sha256(publicKey)).slice(0, 32)

/** An Ed25519 signature of ``data`` for ``context``, as gigi-crdt makes them. */
function signFor (context, data) {
  const tag = Buffer.from(context)
  const message = Buffer.concat([Buffer.from('gigi-crdt signature v1\0'), Buffer.from([tag.length]), tag, Buffer.from(data)])
  return sign(null, message, privateKey)
}

const streams = doc.getMap('streams')
const key = `${member}/0`
if (streams.has(key)) fail(`${key} exists already: this script only writes a member's first bucket`)
const id = randomBytes(12).toString('base64url') // 16 URL-safe characters, as new_id() makes (its start with the time)
const op = {
  s: 0,
  o: 'post',
  i: id,
  t: Date.now() * TICKS_PER_MS,
  n: options.nickname,
  k: 'text',
  c: { text: options.send }
}
const prev = link16('gigi-crdt stream v1\0', options.room, '\0', member) // the stream's genesis
const l = link16(prev, link16(canonical(op))).toString('base64')
doc.transact(() => {
  streams.set(key, Y.Array.from([JSON.stringify({ ...op, p: prev.toString('base64url') })]))
  // The head comes last: it names this client's clock after the transaction, itself included.
  const k = Y.getState(doc.store, doc.clientID) + 1
  const fields = { s: 0, l, c: doc.clientID, k, t: op.t }
  const sig = signFor('stream head', canonical([options.room, member, 0, l, doc.clientID, k, op.t]))
  doc.getMap('heads').set(member, { ...fields, by: member, key: publicKey.toString('base64'), sig: sig.toString('base64') })
})
emit({ event: 'appended', author: member, id, text: options.send })

// The provider sent the update on the open socket; a second client reading it back from the
// relay shows it arrived and was taken (a rejected update would close our socket instead).
const check = await join()
await until(check.doc, () => posts(check.doc).some(({ op }) => op.i === id))
emit({ event: 'confirmed', id })
check.provider.destroy()
provider.destroy()
emit({ event: 'done' })
process.exit(0)
