// A Node.js Yjs client that is not ours: y-websocket's WebsocketProvider over the `ws` package.
//
// Joins a conversation's room on a relay, waits until it is synced and holds every text in
// --expect, prints the posts it sees, appends a post in our layout as --member (bucket
// "<member>/0", entry "s": 0), makes sure the relay holds it (a second client in the same room
// reads it back), and exits 0. Any error or a timeout ends it with a message and a non-zero code.
//
// Output, one JSON object a line on stdout:
//   {"event":"synced"}
//   {"event":"post","author":"...","text":"..."}        once per post seen, in display order
//   {"event":"appended","author":"...","id":"...","text":"..."}
//   {"event":"confirmed","id":"..."}                    a fresh client read it from the relay
//   {"event":"done"}
//
// Usage: node yclient.mjs --url=ws://127.0.0.1:PORT --room=ROOM --token=TOKEN --member=PEER_ID
//                         --nickname=NICK --send=TEXT [--expect=TEXT]... [--timeout=SECONDS]
// (give values with "=": a room name or an id may start with "-")

import { randomBytes } from 'node:crypto'
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
      member: { type: 'string' },
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
for (const name of ['url', 'room', 'token', 'member', 'send']) {
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
    for (const op of bucket.toArray()) {
      if (op !== null && typeof op === 'object' && op.o === 'post') found.push({ author, op })
    }
  }
  return found.sort((a, b) => a.op.t - b.op.t || (a.op.i < b.op.i ? -1 : a.op.i > b.op.i ? 1 : 0))
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

const streams = doc.getMap('streams')
const key = `${options.member}/0`
if (streams.has(key)) fail(`${key} exists already: this script only writes a member's first bucket`)
const id = randomBytes(12).toString('base64url') // 16 URL-safe characters, like new_id()
const op = {
  s: 0,
  o: 'post',
  i: id,
  t: Date.now() * TICKS_PER_MS,
  n: options.nickname,
  k: 'text',
  c: { text: options.send }
}
streams.set(key, Y.Array.from([op]))
emit({ event: 'appended', author: options.member, id, text: options.send })

// The provider sent the update on the open socket; a second client reading it back from the
// relay shows it arrived and was taken (a rejected update would close our socket instead).
const check = await join()
await until(check.doc, () => posts(check.doc).some(({ op }) => op.i === id))
emit({ event: 'confirmed', id })
check.provider.destroy()
provider.destroy()
emit({ event: 'done' })
process.exit(0)
