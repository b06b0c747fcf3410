// Drives Debian's headless Chromium (Playwright, executablePath) through a SMART standalone
// launch of the SMART JS client served from another origin: sign in as a parent, pick a child,
// approve the third-party app on the consent screen (at 320 CSS px, by keyboard), read the plan,
// refresh the token. Prints one JSON line; screenshots go to SHOTS_DIR.
import { chromium } from "playwright-core";
import path from "node:path";

const { APP_URL, SHOTS_DIR, PERSON, CHILD, CHROMIUM } = process.env;
const FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run"];
const shot = (page, name) => page.screenshot({ path: path.join(SHOTS_DIR, name), fullPage: true });
const steps = [];
const browser = await chromium.launch({ executablePath: CHROMIUM || "/usr/bin/chromium", headless: true, args: FLAGS });
try {
  // 320 CSS px wide: the narrowest reflow width WCAG 2.2 SC 1.4.10 asks pages to work at.
  const page = await (await browser.newContext({ viewport: { width: 320, height: 720 } })).newPage();
  page.on("console", (message) => steps.push(`console: ${message.text()}`));
  page.on("framenavigated", (frame) => { if (frame === page.mainFrame()) steps.push(`at ${frame.url()}`); });
  await page.goto(APP_URL);
  await page.waitForURL(/\/oauth\/sign-in\?/, { timeout: 20000 });
  await shot(page, "1-sign-in.png");
  await page.click(`#person-${PERSON}`);
  await page.waitForSelector(`#pick-${CHILD}`, { timeout: 20000 });
  await shot(page, "2-pick-child.png");
  await page.click(`#pick-${CHILD}`);
  await page.waitForSelector("#consent-approve", { timeout: 20000 });
  await shot(page, "3-consent.png");
  const consent = await page.evaluate(() => ({
    heading: document.querySelector("h1").textContent,
    child: document.querySelector("#consent-child").textContent,
    scopes: [...document.querySelectorAll("#consent-scopes li")].map((li) => li.textContent),
    buttons: [...document.querySelectorAll("button")].map((b) => b.textContent.trim()),
    lang: document.documentElement.lang,
    scrollWidth: document.documentElement.scrollWidth,
    innerWidth: window.innerWidth,
  }));
  // Keyboard only: Tab until "Allow" has focus, then Enter.
  consent.tabs = 0;
  while (consent.tabs < 20 && (await page.evaluate(() => document.activeElement?.id)) !== "consent-approve") {
    await page.keyboard.press("Tab");
    consent.tabs += 1;
  }
  consent.focused = await page.evaluate(() => document.activeElement?.id);
  await page.keyboard.press("Enter");
  await page.waitForSelector("#result[data-done]", { timeout: 30000 });
  await shot(page, "4-plan-read-and-refreshed.png");
  const result = JSON.parse(await page.textContent("#result"));
  console.log(JSON.stringify({ ok: true, result, consent, steps }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: String(error), steps }));
} finally {
  await browser.close();
}
