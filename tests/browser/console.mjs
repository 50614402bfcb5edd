// The operator's console (/ui) in a real headless Chromium, against a host
// that guards reads (`protect_reads`): the page asks for the tokens once,
// finds a process by id and sees its state change live when an execution
// is produced, shows a key and a state holding markup as text, replays a
// dead letter after correcting its value, deploys a component and rolls it
// back. Prints one JSON line per step; `{"wait": "produce"}` asks the test
// to produce an execution and answer `go` on stdin. Screenshots go to
// SHOTS_DIR.
//
// node console.mjs EDDY_URL TOKEN ADMIN_TOKEN KEY XSS_KEY DEAD_KEY CANDIDATE_WASM SHOTS_DIR
import readline from "node:readline";
import { chromium } from "playwright-core";

const [eddy, token, admin, key, xssKey, deadKey, candidate, shots] = process.argv.slice(2);
const say = (line) => console.log(JSON.stringify(line));
const lines = readline.createInterface({ input: process.stdin })[Symbol.asyncIterator]();

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"],
});
const policyErrors = [];
const pageErrors = [];
const urls = [];
const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
let failed = false;
try {
  page.setDefaultTimeout(30000);
  page.on("console", (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) policyErrors.push(m.text());
  });
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("request", (r) => urls.push(r.url()));
  // Markup that would run if it were ever put in as HTML.
  await page.addInitScript(() => { window.__xss = 0; });

  // 1. The page loads without a token; its first API call is refused, so
  // it asks for the tokens, once.
  const response = await page.goto(`${eddy}/ui/`);
  say({
    step: "page",
    status: response.status(),
    policy: response.headers()["content-security-policy"] || null,
  });
  await page.waitForSelector("#tokens:not([hidden])");
  await page.fill("#token", token);
  await page.fill("#admin-token", admin);
  await page.click("#tokens-save");
  await page.waitForSelector("#tokens", { state: "hidden" });
  await page.waitForSelector('.card[data-pipeline="async-process"]');
  // A second sample, so the charts have a line.
  await page.waitForTimeout(2500);
  await page.screenshot({ path: `${shots}/pipelines.png`, fullPage: true });
  say({ step: "pipelines", text: await page.textContent("#view") });

  // 2. A process by id, then its changes live.
  await page.click('nav a[data-page="state"]');
  await page.fill("#state-key", key);
  await page.click("#state-lookup");
  await page.waitForSelector("#state-json");
  const before = JSON.parse(await page.textContent("#state-json"));
  await page.click("#state-follow");
  await page.waitForFunction(() => document.getElementById("state-live")?.textContent === "live");
  say({ wait: "produce" });
  await lines.next();
  await page.waitForFunction(() => {
    try {
      return JSON.parse(document.getElementById("state-json").textContent).state === "STARTED";
    } catch {
      return false;
    }
  });
  await page.screenshot({ path: `${shots}/state.png`, fullPage: true });
  const after = JSON.parse(await page.textContent("#state-json"));
  say({ step: "live", before: before.state, after: after.state, changes: await page.locator("#state-change-list li").count() });

  // 3. A key and a state holding markup render as text.
  await page.fill("#state-key", xssKey);
  await page.click("#state-lookup");
  await page.waitForFunction((k) => document.querySelector(".state-key")?.textContent === k, xssKey);
  await page.click("#state-latest-load");
  await page.waitForSelector(".latest-key");
  say({
    step: "markup",
    ...(await page.evaluate(() => ({
      images: document.querySelectorAll("#view img").length,
      scripts: document.querySelectorAll("#view script").length,
      ran: window.__xss,
      key: document.querySelector(".state-key").textContent,
      state: document.getElementById("state-json").textContent,
      latestKeys: [...document.querySelectorAll(".latest-key")].map((a) => a.textContent),
    }))),
  });

  // 4. A dead letter, corrected and replayed.
  await page.click('nav a[data-page="dead-letters"]');
  const card = page.locator(".dead-letter", { hasText: deadKey }).first();
  await card.waitFor();
  const value = card.locator("textarea");
  const original = await value.inputValue();
  await value.fill(original.replace(`"state": "EXPLODED"`, `"state": "DONE"`));
  await page.screenshot({ path: `${shots}/dead-letters.png`, fullPage: true });
  const error = await card.locator(".dl-error").textContent();
  await card.locator(".dl-replay").click();
  await page.waitForFunction(() => /replayed/.test(document.getElementById("status").textContent));
  say({ step: "dead letter", error, original, status: await page.textContent("#status") });

  // 5. A component deployed from a file, then rolled back.
  await page.click('nav a[data-page="plugins"]');
  const selector = '.plugin[data-plugin="async-process-aggregator"]';
  await page.waitForSelector(selector);
  const versionNow = () => page.textContent(`${selector} .plugin-version`);
  const v0 = await versionNow();
  await page.setInputFiles(`${selector} .plugin-file`, candidate);
  await page.click(`${selector} .plugin-deploy`);
  await page.waitForFunction(
    ([s, v]) => document.querySelector(`${s} .plugin-version`)?.textContent !== v,
    [selector, v0],
  );
  const v1 = await versionNow();
  await page.screenshot({ path: `${shots}/plugins.png`, fullPage: true });
  await page.click(`${selector} .plugin-rollback`);
  await page.waitForFunction(
    ([s, v]) => document.querySelector(`${s} .plugin-version`)?.textContent === v,
    [selector, v0],
  );
  say({ step: "plugins", v0, v1, back: await versionNow() });

  // A shadow run of the candidate, its report shown.
  await page.setInputFiles(`${selector} .plugin-file`, candidate);
  await page.click(`${selector} .plugin-shadow`);
  await page.waitForSelector("#shadow-result h2");
  say({ step: "shadow", text: await page.textContent("#shadow-result") });

  // 6. A subject's versions, and the diff between two of them.
  await page.click('nav a[data-page="schemas"]');
  await page.waitForSelector("#schema-out .diff");
  await page.screenshot({ path: `${shots}/schemas.png`, fullPage: true });
  say({
    step: "schemas",
    text: await page.textContent("#schema-out"),
    added: await page.locator("#schema-out .diff-add").allTextContents(),
  });
  await page.click('nav a[data-page="cluster"]');
  await page.waitForFunction(() => /runs alone|this host/.test(document.getElementById("view").textContent));

  say({
    step: "errors",
    policy: policyErrors,
    page: pageErrors,
    tokenInUrl: urls.filter((u) => u.includes(token) || u.includes(admin)),
  });
} catch (e) {
  failed = true;
  const status = await page.textContent("#status").catch(() => "");
  console.error(`${e.message}\nthe page's status line: ${status}\nthe page's errors: ${pageErrors.join("; ")}`);
} finally {
  await browser.close();
}
// stdin stays open for answers: end explicitly.
process.exit(failed ? 1 : 0);
