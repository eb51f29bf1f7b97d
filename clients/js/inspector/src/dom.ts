// A few DOM helpers: the inspector has a handful of views and needs no UI
// library.

type Child = Node | string | number | null | undefined | false
type Attrs = Record<string, string | number | boolean | EventListener | undefined>

/** An element with attributes (`on…` are listeners) and children. */
export function h<K extends keyof HTMLElementTagNameMap> (tag: K, attrs: Attrs = {}, ...children: Child[]): HTMLElementTagNameMap[K] {
  const element = document.createElement(tag)
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === false) continue
    if (name.startsWith('on') && typeof value === 'function') element.addEventListener(name.slice(2), value)
    else element.setAttribute(name, value === true ? '' : String(value))
  }
  append(element, ...children)
  return element
}

export function append (parent: Node, ...children: Child[]): void {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue
    parent.appendChild(typeof child === 'object' ? child : document.createTextNode(String(child)))
  }
}

export function clear (element: Element, ...children: Child[]): void {
  element.replaceChildren()
  append(element, ...children)
}

export function when (ms: number | null | undefined): string {
  if (!ms) return '—'
  return new Date(ms).toLocaleString()
}

export function bytes (n: number): string {
  if (n < 1024) return `${n} B`
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`
  return `${(n / 1024 / 1024).toFixed(1)} MiB`
}

/** A tiny line chart of `values` (oldest first). */
export function sparkline (values: number[], label: string): SVGSVGElement {
  const ns = 'http://www.w3.org/2000/svg'
  const svg = document.createElementNS(ns, 'svg')
  svg.setAttribute('class', 'spark')
  svg.setAttribute('viewBox', '0 0 100 30')
  svg.setAttribute('preserveAspectRatio', 'none')
  svg.setAttribute('aria-label', label)
  const max = Math.max(1e-9, ...values)
  const step = values.length > 1 ? 100 / (values.length - 1) : 100
  const points = values.map((v, i) => `${(i * step).toFixed(2)},${(29 - (v / max) * 27).toFixed(2)}`).join(' ')
  const line = document.createElementNS(ns, 'polyline')
  line.setAttribute('points', points)
  line.setAttribute('fill', 'none')
  line.setAttribute('stroke', '#2f6fde')
  line.setAttribute('stroke-width', '1.5')
  line.setAttribute('vector-effect', 'non-scaling-stroke')
  svg.appendChild(line)
  return svg
}
