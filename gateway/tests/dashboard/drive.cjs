// Drives the gateway's /dashboard page in Debian's headless Chromium with playwright-core, for
// gateway/tests/edge/dashboard.rs. One JSON line per event on stdout; the test sends commands on stdin.
//   node drive.cjs URL TOKEN SCREENSHOT SERVER
// 1. loads URL#token=TOKEN and waits until the page has rendered live data: prints
//    {"event":"ready","routes":[…],"servers":[…],"tenants":[…],"certificates":[…],"errors":[…]}
// 2. then answers each line on stdin:
//    "snapshot" — the cells as the page shows them now: {"event":"snapshot","routes":[{name,upstream,
//      rps,ratio,ratio_class,canary_class}],"tenants":[[…]],"refusals":[[…]],"errors":[…]};
//    "killed" — waits for the page to mark SERVER down: {"event":"down","ms":…,"errors":[…]};
//    "end" — saves a full-page screenshot to SCREENSHOT, prints {"event":"end","errors":[…]} and exits.
"use strict";
const { chromium } = require("playwright-core");
const readline = require("readline");

const [url, token, screenshot, server] = process.argv.slice(2);
const say = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const lines = readline.createInterface({ input: process.stdin });
const queued = [];
let waiting = null;
lines.on("line", (l) => (waiting ? (waiting(l), (waiting = null)) : queued.push(l)));
lines.on("close", () => waiting && waiting(null));
const nextLine = () => (queued.length ? Promise.resolve(queued.shift()) : new Promise((r) => (waiting = r)));

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
  });
  const page = await browser.newPage({ viewport: { width: 1400, height: 900 } });
  const errors = [];
  page.on("console", (m) => { if (m.type() === "error") errors.push(m.text()); });
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("requestfailed", (r) => errors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`));
  await page.goto(`${url}#token=${encodeURIComponent(token)}`);
  await page.waitForSelector('body[data-ready="1"]', { timeout: 30000 });
  // A second poll gives the rates.
  await page.waitForFunction(() => !document.querySelector("#routes").textContent.includes("…"), null, { timeout: 30000 });
  const cells = (sel) => page.$$eval(sel, (els) => els.map((e) => e.textContent.trim()));
  say({
    event: "ready",
    routes: await cells("#routes tr td:first-child"),
    servers: await cells("#upstreams tr td:nth-child(2)"),
    tenants: await cells("#tenants tr td:first-child"),
    certificates: await cells("#certificates tr td"),
    token_in_url: page.url().includes("token="),
    errors,
  });
  for (;;) {
    const command = await nextLine();
    if (command === "snapshot") {
      const shown = await page.evaluate(() => {
        const rows = (id) => [...document.querySelectorAll(`#${id} tr`)].filter((tr) => tr.querySelector("td"));
        return {
          routes: rows("routes").map((tr) => {
            const td = tr.querySelectorAll("td");
            const span = td[3] && td[3].querySelector("span");
            return {
              name: td[0].textContent.trim(),
              upstream: td[3] ? td[3].textContent.trim() : "",
              canary_class: span ? span.className : "",
              rps: td[4] ? td[4].textContent.trim() : "",
              ratio: td[5] ? td[5].textContent.trim() : "",
              ratio_class: td[5] ? td[5].className : "",
            };
          }),
          tenants: rows("tenants").map((tr) => [...tr.querySelectorAll("td")].map((t) => t.textContent.trim())),
          refusals: rows("refusals").map((tr) => [...tr.querySelectorAll("td")].map((t) => t.textContent.trim())),
        };
      });
      say({ event: "snapshot", ...shown, errors });
    } else if (command === "killed") {
      const t0 = Date.now();
      await page.waitForFunction(
        (s) => [...document.querySelectorAll("#upstreams tr")].some((tr) => tr.textContent.includes(s) && tr.querySelector("td.down")),
        server,
        { timeout: 60000, polling: 50 },
      );
      say({ event: "down", ms: Date.now() - t0, errors });
    } else if (command === "end" || command === null) {
      await page.screenshot({ path: screenshot, fullPage: true });
      say({ event: "end", errors });
      break;
    } else {
      throw new Error(`unknown command ${command}`);
    }
  }
  await browser.close();
  process.exit(0);
})().catch((e) => { say({ event: "error", message: String(e && e.stack || e) }); process.exit(1); });
