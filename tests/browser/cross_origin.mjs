// A web front end on another origin, in a real headless Chromium: serves a
// page at http://localhost:PAGE_PORT (an origin the host allows) and at
// http://127.0.0.1:PAGE_PORT (one it does not), and from the page reads,
// produces with a token (a preflighted request) and follows a key's changes
// with EventSource across a restart of the host (automatic reconnect with
// Last-Event-ID). Prints one JSON line per step; a `{"wait": "restart"}`
// line asks the test to restart the host and answer `go` on stdin.
//
// node cross_origin.mjs EDDY_URL PAGE_PORT TOKEN KEY
import http from "node:http";
import readline from "node:readline";
import { chromium } from "playwright-core";

const [eddy, pagePort, token, key] = process.argv.slice(2);
const say = (line) => console.log(JSON.stringify(line));
const input = readline.createInterface({ input: process.stdin });
const lines = input[Symbol.asyncIterator]();

const server = http.createServer((_, res) => {
  res.writeHead(200, { "content-type": "text/html" });
  res.end("<!doctype html><title>front end</title><p>a page on another origin</p>");
});
await new Promise((ok) => server.listen(Number(pagePort), "127.0.0.1", ok));

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const execution = (id, time, state) => ({
  id,
  asyncProcessId: key,
  time,
  state,
  description: `step ${id}`,
  log: null,
  params: "{}",
});

try {
  const page = await browser.newPage();
  await page.goto(`http://localhost:${pagePort}/`);

  // A read: a simple request, no preflight.
  say({
    step: "read",
    ...(await page.evaluate(async (eddy) => {
      const r = await fetch(`${eddy}/v1/pipelines`);
      return { status: r.status, pipelines: (await r.json()).pipelines.map((p) => p.name) };
    }, eddy)),
  });

  // Following the key: EventSource, with the browser's credentials.
  await page.evaluate(
    ([eddy, key]) => {
      window.seen = [];
      window.errors = 0;
      const source = new EventSource(`${eddy}/v1/pipelines/async-process/events?key=${key}`, {
        withCredentials: true,
      });
      source.onmessage = (e) => window.seen.push({ id: e.lastEventId, data: JSON.parse(e.data) });
      source.onerror = () => (window.errors += 1);
      window.source = source;
    },
    [eddy, key],
  );
  await page.waitForFunction(() => window.source.readyState === 1, null, { timeout: 20000 });

  // A write with the token: Authorization and JSON ask for a preflight.
  const produce = (token, records) =>
    page.evaluate(
      async ([eddy, token, records]) => {
        const headers = { "content-type": "application/json" };
        if (token) headers.authorization = `Bearer ${token}`;
        const r = await fetch(`${eddy}/v1/topics/async-process-execution/records`, {
          method: "POST",
          headers,
          body: JSON.stringify({ records }),
        });
        return { status: r.status, challenge: r.headers.get("www-authenticate") };
      },
      [eddy, token, records],
    );
  say({ step: "produce", ...(await produce(token, [{ value: execution("e1", 1000, "STARTED") }])) });
  say({ step: "produce without token", ...(await produce(null, [{ value: execution("x", 1, "DONE") }])) });

  await page.waitForFunction(() => window.seen.length >= 1, null, { timeout: 20000 });
  say({ step: "first change", ...(await page.evaluate(() => window.seen[0])) });

  // The host goes away and comes back; the test produces e2 meanwhile.
  say({ wait: "restart" });
  await lines.next();
  await page.waitForFunction(() => window.seen.length >= 2, null, { timeout: 30000 });
  say({
    step: "after reconnect",
    ...(await page.evaluate(() => ({ errors: window.errors, seen: window.seen }))),
  });

  // An origin that is not allowed: the browser withholds the answer.
  const other = await browser.newPage();
  await other.goto(`http://127.0.0.1:${pagePort}/`);
  say({
    step: "other origin",
    ...(await other.evaluate(async (eddy) => {
      try {
        const r = await fetch(`${eddy}/v1/pipelines`);
        return { blocked: false, status: r.status };
      } catch (e) {
        return { blocked: true, error: String(e) };
      }
    }, eddy)),
  });
} finally {
  input.close();
  await browser.close();
  server.close();
}
