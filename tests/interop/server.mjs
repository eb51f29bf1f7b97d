// Runs the real yrelay binary for a test: a free port, a private store,
// stop/kill/restart on the same port and store.
import { spawn } from 'node:child_process'
import net from 'node:net'
import { mkdtempSync, rmSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..')
export const yrelayBin = process.env.YRELAY_BIN ?? join(root, 'target', 'debug', 'yrelay')

/** Waits until `check()` is true, re-checking whenever `emitter` emits one of `events`. */
export function waitFor (what, check, emitters, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const listeners = []
    const done = (err) => {
      clearTimeout(timer)
      for (const [em, ev, fn] of listeners) em.off(ev, fn)
      err ? reject(err) : resolve()
    }
    const test = () => { try { if (check()) done() } catch (e) { done(e) } }
    const timer = setTimeout(() => done(new Error(`timed out waiting for ${what}`)), timeoutMs)
    for (const [em, ev] of emitters) {
      em.on(ev, test)
      listeners.push([em, ev, test])
    }
    test()
  })
}

export class YrelayProcess {
  constructor (args = []) {
    this.args = args
    this.dir = mkdtempSync(join(tmpdir(), 'yrelay-interop-'))
    this.listen = '127.0.0.1:0'
  }

  start () {
    return new Promise((resolve, reject) => {
      const proc = spawn(yrelayBin, [
        'serve', '--listen', this.listen,
        ...(this.args.includes('--store') ? [] : ['--store', `sqlite://${join(this.dir, 'yrelay.db')}`]), ...this.args
      ], { stdio: ['ignore', 'ignore', 'pipe'] })
      this.proc = proc
      let buffered = ''
      const onData = (chunk) => {
        buffered += chunk.toString()
        const m = buffered.match(/listening on (https?):\/\/(\S+)/)
        if (m) {
          proc.stderr.off('data', onData)
          proc.stderr.resume()
          const [, scheme, addr] = m
          this.listen = addr
          this.httpUrl = `${scheme}://${addr}`
          this.wsUrl = `${scheme === 'https' ? 'wss' : 'ws'}://${addr}/v1/ws`
          resolve(this)
        }
      }
      proc.stderr.on('data', onData)
      proc.once('exit', (code) => reject(new Error(`yrelay exited early (${code}): ${buffered}`)))
    })
  }

  stop (signal = 'SIGTERM') {
    return new Promise((resolve) => {
      if (this.proc.exitCode !== null || this.proc.signalCode !== null) return resolve()
      this.proc.once('exit', () => resolve())
      this.proc.kill(signal)
    })
  }

  async restart () {
    await this.stop()
    return this.start()
  }

  async dispose () {
    await this.stop('SIGKILL')
    rmSync(this.dir, { recursive: true, force: true })
  }
}

/** A free TCP port on 127.0.0.1. */
export function freePort () {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address()
      srv.close(() => resolve(port))
    })
  })
}

/** A private redis-server on a free port (never the machine's shared one). */
export class RedisProcess {
  async start () {
    this.port = await freePort()
    this.dir = mkdtempSync(join(tmpdir(), 'yrelay-redis-'))
    this.proc = spawn('redis-server', ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--dir', this.dir],
      { stdio: ['ignore', 'pipe', 'inherit'] })
    this.url = `redis://127.0.0.1:${this.port}`
    await new Promise((resolve, reject) => {
      let out = ''
      const onData = (chunk) => {
        out += chunk.toString()
        if (out.includes('Ready to accept connections')) {
          this.proc.stdout.off('data', onData)
          this.proc.stdout.resume()
          resolve()
        }
      }
      this.proc.stdout.on('data', onData)
      this.proc.once('exit', (code) => reject(new Error(`redis-server exited (${code}): ${out}`)))
    })
    return this
  }

  async dispose () {
    if (this.proc.exitCode === null && this.proc.signalCode === null) {
      await new Promise((resolve) => { this.proc.once('exit', resolve); this.proc.kill('SIGKILL') })
    }
    rmSync(this.dir, { recursive: true, force: true })
  }
}
