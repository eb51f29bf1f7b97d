// An SSE + POST client's event stream, read with fetch.
import assert from 'node:assert/strict'

/** An open event stream; `next(type)` resolves with the next event of that type. */
export class EventStream {
  constructor (response, controller) {
    this.controller = controller
    this.events = []
    this.waiters = []
    this.pump(response.body.getReader())
  }

  async pump (reader) {
    const decoder = new TextDecoder()
    let buffer = ''
    try {
      for (;;) {
        const { value, done } = await reader.read()
        if (done) break
        buffer += decoder.decode(value, { stream: true })
        let end
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          const event = { type: 'message', data: '', id: undefined }
          for (const line of block.split('\n')) {
            if (line.startsWith('event:')) event.type = line.slice(6).trim()
            else if (line.startsWith('data:')) event.data += line.slice(5).trim()
            else if (line.startsWith('id:')) event.id = line.slice(3).trim()
          }
          if (block.split('\n').every(l => l.startsWith(':'))) continue
          this.events.push(event)
          this.wake()
        }
      }
    } catch {}
  }

  wake () {
    for (const w of this.waiters.splice(0)) w()
  }

  next (type, timeoutMs = 20000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${type} event`)), timeoutMs)
      const check = () => {
        const i = this.events.findIndex(e => e.type === type)
        if (i >= 0) {
          clearTimeout(timer)
          resolve(this.events.splice(i, 1)[0])
        } else {
          this.waiters.push(check)
        }
      }
      check()
    })
  }

  close () { this.controller.abort() }
}

export async function openStream (server, doc, { sv, lastEventId } = {}) {
  const controller = new AbortController()
  const query = sv ? `?sv=${Buffer.from(sv).toString('base64url')}` : ''
  const headers = lastEventId ? { 'Last-Event-ID': lastEventId } : {}
  const response = await fetch(`${server.httpUrl}/v1/docs/${doc}/events${query}`, { headers, signal: controller.signal })
  assert.equal(response.status, 200)
  assert.match(response.headers.get('content-type'), /text\/event-stream/)
  return new EventStream(response, controller)
}

