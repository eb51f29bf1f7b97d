// The inspector talks only to yrelay's public HTTP API, with the admin
// token the user pasted (kept for this browser tab only).

const KEY = 'yrelay-inspector-token'

export class ApiError extends Error {
  constructor (readonly status: number, readonly code: string, message: string) {
    super(message)
  }

  /** The token is missing, wrong, expired, or not an admin's. */
  get unauthorized (): boolean {
    return this.status === 401 || this.status === 403
  }
}

export function token (): string | null {
  return sessionStorage.getItem(KEY)
}

export function setToken (value: string | null): void {
  if (value) sessionStorage.setItem(KEY, value)
  else sessionStorage.removeItem(KEY)
}

function headers (extra: Record<string, string> = {}): Record<string, string> {
  const t = token()
  return t ? { ...extra, Authorization: `Bearer ${t}` } : extra
}

async function check (response: Response): Promise<Response> {
  if (response.ok) return response
  let code = 'HTTP_' + response.status
  let message = response.statusText
  try {
    const body = await response.json()
    code = body.error?.code ?? code
    message = body.error?.message ?? message
  } catch { /* not JSON */ }
  throw new ApiError(response.status, code, message)
}

export async function get<T> (path: string): Promise<T> {
  const response = await check(await fetch(path, { headers: headers() }))
  return await response.json() as T
}

export async function getBytes (path: string): Promise<Blob> {
  return await (await check(await fetch(path, { headers: headers() }))).blob()
}

export async function getText (path: string): Promise<string> {
  return await (await check(await fetch(path, { headers: headers() }))).text()
}

export async function send<T> (method: string, path: string, body?: unknown): Promise<T | null> {
  const init: RequestInit = { method, headers: headers(body === undefined ? {} : { 'Content-Type': 'application/json' }) }
  if (body !== undefined) init.body = JSON.stringify(body)
  const response = await check(await fetch(path, init))
  const text = await response.text()
  return text ? JSON.parse(text) as T : null
}

/** An event stream of the API (EventSource cannot send headers: `?token=`). */
export function events (path: string): EventSource {
  const t = token()
  return new EventSource(t ? `${path}?token=${encodeURIComponent(t)}` : path)
}

export const enc = encodeURIComponent

export function docPath (space: string, doc: string): string {
  return `/v1/docs/${enc(space)}/${enc(doc)}`
}

export interface DocMeta {
  doc: string
  title: string | null
  blocked: boolean
  createdAt: number
  updatedAt: number
  size: number
  connections?: number
  deletedAt?: number
}

export interface SpaceMeta { space: string, docs: number, updatedAt: number }

export interface Connections {
  live: boolean
  instance?: string
  connections: Array<{ id: string, transport: string, user: string | null, since: number, clients: number[] }>
  presence: Array<{ clientId: number, clock: number, state: unknown, updatedAt: number, connection: string | null, instance: string | null }>
  stateVector: Record<string, number>
}
