// Drives Debian's headless Chromium (Playwright, executablePath) through a SMART standalone
// launch of the SMART JS client served from another origin: sign in as a parent, pick a child,
// read the plan, refresh the token. Prints one JSON line; screenshots go to SHOTS_DIR.
import { chromium } from "playwright-core";
import path from "node:path";

const { APP_URL, SHOTS_DIR, PERSON, CHILD, CHROMIUM } = process.env;
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS_DIR, name), fullPage: true });
const steps = [];
const browser = await chromium.launch({ executablePath: CHROMIUM || "/usr/bin/chromium", headless: true, args: FLAGS });
try {
  const page = await (await browser.newContext()).newPage();
  page.on("console", (message) => steps.push(`console: ${message.text()}`));
  page.on("framenavigated", (frame) => { if (frame === page.mainFrame()) steps.push(`at ${frame.url()}`); });
  await page.goto(APP_URL);
  await page.waitForURL(/\/oauth\/sign-in\?/, { timeout: 20000 });
  await shot(page, "1-sign-in.png");
  await page.click(`#person-${PERSON}`);
  await page.waitForSelector(`#pick-${CHILD}`, { timeout: 20000 });
  await shot(page, "2-pick-child.png");
  await page.click(`#pick-${CHILD}`);
  await page.waitForSelector("#result[data-done]", { timeout: 30000 });
  await shot(page, "3-plan-read-and-refreshed.png");
  const result = JSON.parse(await page.textContent("#result"));
  console.log(JSON.stringify({ ok: true, result, steps }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error), steps }));
} finally {
  await browser.close();
}
