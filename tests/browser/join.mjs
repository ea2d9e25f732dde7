// Joins a conference from Chromium through the page the core serves, and reports what the page
// hears, as one line of JSON on stdout:
//
//   {"ok":true,"steps":[{"n":1,"ms":12,...},...],"levels":{"440":0,"660":-61.2},"peak":{...}}
//   {"ok":false,"error":"step N (...): reason"}
//
// Levels are in dB relative to the strongest frequency the page hears (0 for the strongest).
// Exit code 0 when the join succeeded and the measurement was made, 1 otherwise. The script
// stops by itself after --timeout seconds (default 30) and always closes the browser.
//
// Usage:
//   node tests/browser/join.mjs --url http://127.0.0.1:8080/ --scheme 7 --name browser \
//     --wav /tmp/tone.wav --seconds 4 --freqs 440,660 [--cluster 1] [--relay] [--timeout 30] \
//     [--chromium /usr/bin/chromium] [--verbose] [--sdp]
//
// --record FILE records --seconds of what the page plays (after --settle seconds, 1 by default)
// into FILE as 48 kHz mono 16-bit WAV instead of measuring tone levels, and reports
// {"ok":true,"steps":[...],"recorded":{"file":...,"rate":48000,"samples":N}}.
//
// --sdp adds to the report the offer's SDP, the CALLME_S2 params taken from it, servufrag as the
// page read it, and the answer SDP the page wrote (to compare with the SDK's own).
//
// The browser's microphone is Chromium's fake capture device, fed from --wav when given.

import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';
import { chromiumArgs } from './chromium.mjs';

function parseArgs(argv) {
  const opts = {
    url: null,
    scheme: null,
    name: 'browser',
    cluster: '1',
    wav: null,
    seconds: 4,
    freqs: [440, 660],
    relay: false,
    timeout: 30,
    chromium: process.env.CHROMIUM || '/usr/bin/chromium',
    verbose: false,
    sdp: false,
    record: null,
    settle: 1,
  };
  for (let i = 0; i < argv.length; i++) {
    const key = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${key} needs a value`);
      return argv[++i];
    };
    switch (key) {
      case '--url': opts.url = value(); break;
      case '--scheme': opts.scheme = value(); break;
      case '--name': opts.name = value(); break;
      case '--cluster': opts.cluster = value(); break;
      case '--wav': opts.wav = value(); break;
      case '--seconds': opts.seconds = Number(value()); break;
      case '--freqs': opts.freqs = value().split(',').map((f) => Number(f.trim())); break;
      case '--relay': opts.relay = true; break;
      case '--timeout': opts.timeout = Number(value()); break;
      case '--chromium': opts.chromium = value(); break;
      case '--verbose': opts.verbose = true; break;
      case '--sdp': opts.sdp = true; break;
      case '--record': opts.record = value(); break;
      case '--settle': opts.settle = Number(value()); break;
      default: throw new Error(`unknown argument ${key}`);
    }
  }
  if (!opts.url) throw new Error('--url is required (the core\'s page, e.g. http://127.0.0.1:8080/)');
  if (!opts.scheme) throw new Error('--scheme is required (the conference number)');
  if (!(opts.seconds > 0)) throw new Error('--seconds must be a positive number');
  if (opts.freqs.some((f) => !(f > 0))) throw new Error('--freqs must be positive numbers, comma-separated');
  if (!(opts.timeout > 0)) throw new Error('--timeout must be a positive number');
  return opts;
}

// In the page: records `ms` of the remote track as the page plays it, through WebAudio at
// 48 kHz, and returns it as base64 little-endian 16-bit PCM.
async function recordRemote(ms) {
  const receiver = window.callme.pc.getReceivers().find((r) => r.track && r.track.kind === 'audio');
  if (!receiver) throw new Error('no remote audio track to record');
  const ctx = new AudioContext({ sampleRate: 48000 });
  await ctx.resume();
  const src = ctx.createMediaStreamSource(new MediaStream([receiver.track]));
  const proc = ctx.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  proc.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  src.connect(proc);
  // A script processor runs only while connected onward.
  proc.connect(ctx.destination);
  await new Promise((r) => setTimeout(r, ms));
  proc.disconnect();
  src.disconnect();
  const n = chunks.reduce((a, c) => a + c.length, 0);
  const pcm = new Int16Array(n);
  let o = 0;
  for (const c of chunks) for (const x of c) pcm[o++] = Math.max(-32768, Math.min(32767, Math.round(x * 32767)));
  const bytes = new Uint8Array(pcm.buffer);
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  await ctx.close();
  return { rate: ctx.sampleRate, samples: n, b64: btoa(bin) };
}

// Writes mono 16-bit PCM as a WAV file.
function writeWav(file, rate, pcm) {
  const h = Buffer.alloc(44);
  h.write('RIFF', 0);
  h.writeUInt32LE(36 + pcm.length, 4);
  h.write('WAVEfmt ', 8);
  h.writeUInt32LE(16, 16);
  h.writeUInt16LE(1, 20);
  h.writeUInt16LE(1, 22);
  h.writeUInt32LE(rate, 24);
  h.writeUInt32LE(rate * 2, 28);
  h.writeUInt16LE(2, 32);
  h.writeUInt16LE(16, 34);
  h.write('data', 36);
  h.writeUInt32LE(pcm.length, 40);
  writeFileSync(file, Buffer.concat([h, pcm]));
}

let finished = false;
function report(result, code) {
  if (finished) return;
  finished = true;
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exitCode = code;
}

async function main() {
  let opts;
  try {
    opts = parseArgs(process.argv.slice(2));
  } catch (e) {
    report({ ok: false, error: `arguments: ${e.message}` }, 1);
    return;
  }
  const log = (...a) => {
    if (opts.verbose) console.error(...a);
  };

  const args = chromiumArgs(opts.wav);

  const page_url = new URL(opts.url);
  page_url.searchParams.set('scheme', opts.scheme);
  page_url.searchParams.set('name', opts.name);
  page_url.searchParams.set('cluster', opts.cluster);
  if (opts.relay) page_url.searchParams.set('relay', '1');

  const profile = mkdtempSync(join(tmpdir(), 'callme-chromium-'));
  let context = null;
  // Closes the browser once (later calls wait for the first) and removes the profile.
  let closing = null;
  const closeBrowser = () => {
    if (!closing) {
      closing = (async () => {
        if (context) await Promise.race([context.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
        try {
          rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 100 });
        } catch (e) {
          console.error(`could not remove ${profile}: ${e.message}`);
        }
      })();
    }
    return closing;
  };

  const deadline = setTimeout(async () => {
    report({ ok: false, error: `timed out after ${opts.timeout} s` }, 1);
    await closeBrowser();
    process.exit(1);
  }, opts.timeout * 1000);

  try {
    // A persistent context on a fresh profile directory: nothing from an earlier run is reused.
    context = await chromium.launchPersistentContext(profile, {
      executablePath: opts.chromium,
      headless: true,
      args,
    });
    const page = context.pages()[0] || (await context.newPage());
    page.on('console', (m) => log(`[page ${m.type()}] ${m.text()}`));
    page.on('pageerror', (e) => log(`[page error] ${e.message}`));
    log(`opening ${page_url}`);
    await page.goto(page_url.toString(), { waitUntil: 'load' });
    await page.waitForFunction(() => Boolean(window.callme && window.callme.done));

    const joined = await page.evaluate(() =>
      window.callme.done.then(
        () => ({ ok: true }),
        (e) => ({ ok: false, error: String((e && e.message) || e) }),
      ),
    );
    const steps = await page.evaluate(() => window.callme.steps);
    if (!joined.ok) {
      report({ ok: false, error: joined.error, steps }, 1);
      return;
    }
    log(`joined: ${steps.map((s) => `${s.n}@${s.ms}`).join(' ')}`);

    // A settling time (a second unless --settle), then the measurement.
    await page.waitForTimeout(Math.round(opts.settle * 1000));
    if (opts.record) {
      const rec = await page.evaluate(recordRemote, Math.round(opts.seconds * 1000));
      writeWav(opts.record, rec.rate, Buffer.from(rec.b64, 'base64'));
      report({ ok: true, steps, recorded: { file: opts.record, rate: rec.rate, samples: rec.samples } }, 0);
      return;
    }
    const levels = await page.evaluate(
      ([freqs, ms]) => window.callme.toneLevels(freqs, ms),
      [opts.freqs, Math.round(opts.seconds * 1000)],
    );
    const state = await page.evaluate(() => ({
      error: window.callme.error,
      ended: window.callme.ended,
      analysis: window.callme.lastAnalysis,
      ice: window.callme.pc && window.callme.pc.iceConnectionState,
      sdp: {
        offer: window.callme.offerSdp,
        s2: window.callme.s2Params,
        servufrag: window.callme.servufrag,
        answer: window.callme.answerSdp,
      },
    }));
    if (state.error || state.ended) {
      report({ ok: false, error: state.error || `the call ended while listening: ${state.ended}`, steps }, 1);
      return;
    }
    const a = state.analysis || {};
    const result = { ok: true, steps, levels, silent: a.silent, peak: a.peak, db: a.db, ice: state.ice };
    if (opts.sdp) result.sdp = state.sdp;
    report(result, 0);
  } catch (e) {
    report({ ok: false, error: `browser: ${e.message.split('\n')[0]}` }, 1);
  } finally {
    clearTimeout(deadline);
    await closeBrowser();
  }
}

await main();
