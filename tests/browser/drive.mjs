// A browser a test can drive step by step: Debian's Chromium (playwright-core) opens the core's
// page, then this script reads one JSON command per line on stdin and answers each with one
// JSON line on stdout, in order:
//
//   {"eval": "window.callme.roster()"}      -> {"ok": true, "value": ...}   (awaited if a promise)
//   {"fill": "#login-user", "value": "ann"} -> {"ok": true}
//   {"click": "#login-submit"}              -> {"ok": true}
//   {"screenshot": "/path/page.png"}        -> {"ok": true}
//   {"text": "#roster"}                     -> {"ok": true, "value": "the element's innerText"}
//   {"close": true}                         -> {"ok": true}, then the browser closes and the script ends
//
// A failed command answers {"ok": false, "error": "..."}; the script goes on. It ends by itself
// when stdin closes or after --timeout seconds.
//
//   node drive.mjs --url http://127.0.0.1:PORT/ --query "scheme=7&login=1" [--wav tone.wav]
//                  [--timeout 120] [--chromium /usr/bin/chromium] [--verbose]

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { chromium } from 'playwright-core';
import { chromiumArgs } from './chromium.mjs';

function parseArgs(argv) {
  const opts = { url: null, query: '', wav: null, timeout: 120, chromium: process.env.CHROMIUM || '/usr/bin/chromium', verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${key} needs a value`);
      return argv[++i];
    };
    switch (key) {
      case '--url': opts.url = value(); break;
      case '--query': opts.query = value(); break;
      case '--wav': opts.wav = value(); break;
      case '--timeout': opts.timeout = Number(value()); break;
      case '--chromium': opts.chromium = value(); break;
      case '--verbose': opts.verbose = true; break;
      default: throw new Error(`unknown argument ${key}`);
    }
  }
  if (!opts.url) throw new Error('--url is required (the core\'s page, e.g. http://127.0.0.1:8080/)');
  if (!(opts.timeout > 0)) throw new Error('--timeout must be a positive number');
  return opts;
}

const reply = (r) => process.stdout.write(`${JSON.stringify(r)}\n`);

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    reply({ ok: false, error: `arguments: ${e.message}` });
    process.exitCode = 1;
    return;
  }
  const log = (...a) => {
    if (opts.verbose) console.error(...a);
  };
  const args = chromiumArgs(opts.wav);
  const profile = mkdtempSync(join(tmpdir(), 'callme-chromium-'));
  let context = null;
  const close = async () => {
    if (context) await Promise.race([context.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
    context = null;
    try {
      rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
    } catch (e) {
      console.error(`could not remove ${profile}: ${e.message}`);
    }
  };
  const deadline = setTimeout(async () => {
    console.error(`drive.mjs: timed out after ${opts.timeout} s`);
    await close();
    process.exit(1);
  }, opts.timeout * 1000);

  let page;
  try {
    // A phone-sized window: the page must stay usable there.
    context = await chromium.launchPersistentContext(profile, {
      executablePath: opts.chromium,
      headless: true,
      args,
      viewport: { width: 390, height: 844 },
    });
    page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => log(`[page ${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => log(`[page error] ${e.message}`));
    const url = new URL(opts.url);
    for (const [k, v] of new URLSearchParams(opts.query)) url.searchParams.set(k, v);
    await page.goto(url.toString(), { waitUntil: 'load' });
    await page.waitForFunction(() => Boolean(window.callme && window.callme.done));
    reply({ ok: true, value: 'ready' });
  } catch (e) {
    reply({ ok: false, error: `browser: ${e.message.split('\n')[0]}` });
    clearTimeout(deadline);
    await close();
    process.exitCode = 1;
    return;
  }

  const lines = createInterface({ input: process.stdin });
  for await (const line of lines) {
    if (!line.trim()) continue;
    let c;
    try {
      c = JSON.parse(line);
    } catch (e) {
      reply({ ok: false, error: `not JSON: ${e.message}` });
      continue;
    }
    try {
      if (c.eval !== undefined) {
        // The expression is evaluated in the page; a promise is awaited.
        const value = await page.evaluate(`(async () => (${c.eval}))()`);
        reply({ ok: true, value: value === undefined ? null : value });
      } else if (c.fill !== undefined) {
        await page.fill(c.fill, String(c.value ?? ''));
        reply({ ok: true });
      } else if (c.click !== undefined) {
        await page.click(c.click);
        reply({ ok: true });
      } else if (c.text !== undefined) {
        reply({ ok: true, value: await page.innerText(c.text) });
      } else if (c.screenshot !== undefined) {
        await page.screenshot({ path: c.screenshot, fullPage: true });
        reply({ ok: true });
      } else if (c.close) {
        reply({ ok: true });
        break;
      } else {
        reply({ ok: false, error: `unknown command: ${line.slice(0, 80)}` });
      }
    } catch (e) {
      reply({ ok: false, error: String(e && e.message ? e.message.split('\n')[0] : e) });
    }
  }
  clearTimeout(deadline);
  await close();
}

await main();
