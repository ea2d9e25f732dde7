// callme browser client: joins a conference's audio by the 19-step WebRTC join sequence.
//
// The page reads its parameters from the query string:
//   scheme  the conference number (SchemeID of cd.load), required
//   name    the display name (NAME of cd.load)
//   cluster the ClusterID, default 1
//   relay=1 use only the TURN relay (iceTransportPolicy "relay")
//   login=1 log in (q_cplxLogin) before cd.load; the form is also shown when the core asks
//   auto=0  do not join on load; call window.callmeJoin() instead
//
// In the call the page keeps the conference's roster by applying conf.changed in order
// (docs/protocol.md, "The roster"), shows who talks and whose microphone is off, and has a chat
// panel (INSTANTMSG, conf.instantmsg), a mute button for oneself (SETMIC, and the microphone
// track disabled) and, for a controlling login, mute and remove buttons per party.
//
// No SDP crosses the wire: CALLME_S2 carries what the core needs out of the browser's offer, and
// the page writes the core's answer itself from conf.webrtc.servufrag, line for line as the Rust
// SDK's `media::sdp::build_answer` does.
//
// For tests and scripts the page exposes
//   window.callme = { steps, log, done, error, failedStep, ended, heard(ms, freqs), toneLevels(freqs, ms),
//                     party, conference, pc, offerSdp, s2Params, servufrag, answerSdp, lastAnalysis,
//                     account, control, roster(), chat, micOn, say(msg), setMic(on), setMicOf(id, on),
//                     remove(id), login(user, password) }
//   window.callmeJoin() -> the `done` promise (starts the join if it has not started)

(() => {
  'use strict';

  // The seed's table, in the words of src/spec.rs.
  const STEPS = {
    1: 'call getUserMedia (acquire the audio source)',
    2: 'receive the local audio stream',
    3: 'send CALLME_S1 for oneself',
    4: 'wait for the positive answer to CALLME_S1',
    5: 'wait for conf.webrtc.servdesc',
    6: "create the PeerConnection with servdesc's ICE server",
    7: 'call createOffer',
    8: 'receive the offer',
    9: 'pull ufrag, pwd and fingerprint out of the offer',
    10: 'call setLocalDescription',
    11: 'wait for setLocalDescription to complete',
    12: 'send CALLME_S2 with ufrag and pwd for oneself',
    13: 'wait for the positive answer to CALLME_S2',
    14: 'wait for conf.webrtc.servufrag',
    15: "build the core's session description from servufrag",
    16: 'call setRemoteDescription',
    17: 'wait for setRemoteDescription to complete',
    18: 'wait for the remote track (ontrack)',
    19: 'attach the incoming audio to playback',
  };

  // Waits, in milliseconds (as the SDK's signaling::Timeouts).
  const TIMEOUT = { open: 5000, answer: 5000, event: 5000, media: 10000 };

  const EXT_AUDIO_LEVEL = 'urn:ietf:params:rtp-hdrext:ssrc-audio-level';
  const EXT_SDES_MID = 'urn:ietf:params:rtp-hdrext:sdes:mid';
  const SUBPROTOCOL = 'PalladaWSData';

  // ---------------------------------------------------------------------------------------------
  // Parameters

  function readParams() {
    const q = new URLSearchParams(location.search);
    const num = (key, def) => {
      const v = q.get(key);
      if (v === null || v === '') return def;
      if (!/^\d+$/.test(v.trim())) throw new Error(`query parameter ${key}=${JSON.stringify(v)} is not a non-negative integer`);
      return v.trim();
    };
    return {
      scheme: num('scheme', null),
      name: q.get('name') || 'browser',
      cluster: num('cluster', '1'),
      relay: q.get('relay') === '1',
      login: q.get('login') === '1',
      auto: q.get('auto') !== '0',
    };
  }

  // ---------------------------------------------------------------------------------------------
  // The page

  const ui = {
    list: () => document.getElementById('steps'),
    status: () => document.getElementById('status'),
    error: () => document.getElementById('error'),
    audio: () => document.getElementById('remote'),
    byId: (id) => document.getElementById(id),
  };

  function show(entry) {
    const list = ui.list();
    if (!list) return;
    const li = document.createElement('li');
    li.className = entry.kind;
    if (entry.n) li.dataset.step = String(entry.n);
    const num = entry.n ? `${entry.n}.` : '·';
    const detail = entry.detail ? ` (${entry.detail})` : '';
    li.textContent = `${num} ${entry.text}${detail}: ${entry.ms} ms`;
    list.appendChild(li);
  }

  function setStatus(text) {
    const el = ui.status();
    if (el) el.textContent = text;
  }

  function setError(text) {
    const el = ui.error();
    if (el) {
      el.textContent = text;
      el.hidden = false;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // State exposed to the page's user and to tests

  let resolveDone;
  let rejectDone;
  const done = new Promise((res, rej) => {
    resolveDone = res;
    rejectDone = rej;
  });
  done.catch(() => {}); // a failure is reported through callme.error and the page as well

  let t0 = performance.now();
  const elapsed = () => Math.round(performance.now() - t0);

  const callme = {
    // The numbered steps performed, in order: {n, text, ms, detail}.
    steps: [],
    // Everything, numbered or not (opening the socket, cd.load, ignored frames, the failure).
    log: [],
    done,
    // "step N (...): reason" once the join failed; null otherwise.
    error: null,
    failedStep: null,
    // Why the call ended after a successful join (null while it runs).
    ended: null,
    cluster: null,
    party: null,
    conference: null,
    pc: null,
    // What went into and came out of steps 9-15: the offer's SDP, the CALLME_S2 params taken
    // from it, servufrag as read, and the answer SDP written from it.
    offerSdp: null,
    s2Params: null,
    servufrag: null,
    answerSdp: null,
    // The last analysis made by heard() / toneLevels().
    lastAnalysis: null,
    heard,
    toneLevels,
    // The login's RETCODE and NAME once logged in ({retcode, name, role}); null in open mode.
    account: null,
    // Whether the session controls the conference (bControl of cd.load).
    control: false,
    // The conference's parties, ordered by Index: {id, index, name, state, micOn, talking}.
    roster: () => roster.map((p) => ({ ...p })),
    // Chat lines in arrival order: {from, username, msg, color, time}.
    chat: [],
    // conf.changed entries that matched nothing (a delParties for an unknown party, ...).
    anomalies: [],
    micOn: true,
    say,
    setMic,
    setMicOf,
    remove,
    login: submitLogin,
  };
  window.callme = callme;

  function note(kind, n, text, detail) {
    const entry = { kind, n, text, ms: elapsed(), detail: detail || '' };
    callme.log.push(entry);
    if (n && kind === 'step') callme.steps.push({ n, text, ms: entry.ms, detail: entry.detail });
    show(entry);
    return entry;
  }
  const step = (n, detail) => note('step', n, STEPS[n], detail);

  // A failure at a step: carries the step number for the report.
  class StepError extends Error {
    constructor(n, reason) {
      super(n ? `step ${n} (${STEPS[n]}): ${reason}` : reason);
      this.step = n;
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The WebSocket session: seq numbers, answers matched by seq, events kept until waited for

  class Session {
    constructor(url) {
      this.url = url;
      this.ws = null;
      this.seq = 0;
      this.answers = new Map(); // seq -> answer kept until waited for
      this.events = []; // events kept until waited for, in arrival order
      this.waiters = new Set(); // {test(frame) -> bool, resolve, reject}
      this.closed = null; // reason once closed
      this.party = null; // own PartyID (string) once loaded
      this.onInCall = null; // after the join: called with each event for oneself
      this.onClose = null;
    }

    open(step) {
      return new Promise((resolve, reject) => {
        let ws;
        try {
          ws = new WebSocket(this.url, SUBPROTOCOL);
        } catch (e) {
          reject(new StepError(step, `the WebSocket ${this.url} could not be opened: ${e.message}`));
          return;
        }
        this.ws = ws;
        const timer = setTimeout(() => {
          reject(new StepError(step, `timed out after ${TIMEOUT.open} ms opening the WebSocket ${this.url}`));
          ws.close();
        }, TIMEOUT.open);
        ws.onopen = () => {
          clearTimeout(timer);
          resolve();
        };
        ws.onerror = () => {}; // the close event that follows carries the code
        ws.onclose = (ev) => {
          clearTimeout(timer);
          const reason = `the WebSocket closed (code ${ev.code}${ev.reason ? `, ${ev.reason}` : ''})`;
          this.closed = reason;
          reject(new StepError(step, `the WebSocket ${this.url} could not be opened: ${reason}`));
          for (const w of this.waiters) w.reject(reason);
          this.waiters.clear();
          if (this.onClose) this.onClose(reason);
        };
        ws.onmessage = (ev) => this.receive(ev.data);
      });
    }

    receive(text) {
      let frame;
      try {
        frame = JSON.parse(text);
      } catch (e) {
        note('ignored', 0, 'a frame that is not JSON was ignored', String(text).slice(0, 80));
        return;
      }
      if (frame && frame.ANSW) {
        const a = frame.ANSW;
        const seq = Number(a.seq);
        for (const w of this.waiters) {
          if (w.seq === seq) {
            this.waiters.delete(w);
            w.resolve(a);
            return;
          }
        }
        this.answers.set(seq, a);
        return;
      }
      if (frame && frame.EVT) {
        const e = frame.EVT;
        const name = [e.obj, e.evt, e.evttype].filter((x) => x !== undefined && x !== null && x !== '').join('.');
        const result = e.result || {};
        const party = result.PartyID;
        const mine = party === undefined || party === null || this.party === null || String(party) === this.party;
        if (name === 'conf.changed' || name === 'conf.instantmsg') {
          if (String(result.ID) === String(callme.conference)) {
            if (name === 'conf.changed') applyChanged(result);
            else addChat(result);
          } else {
            note('ignored', 0, `${name} for another conference ignored`, `ID ${result.ID}`);
          }
          return;
        }
        if (!name.startsWith('conf.webrtc.') || !mine) {
          // timer.time, and events for other parties.
          if (name !== 'timer.time') note('ignored', 0, `${name} ignored`, mine ? '' : `for party ${party}`);
          return;
        }
        const event = { name, result };
        if (this.onInCall) {
          this.onInCall(event);
          return;
        }
        for (const w of this.waiters) {
          if (w.event && (w.event === name || name === 'conf.webrtc.Disconnected')) {
            this.waiters.delete(w);
            w.resolve(event);
            return;
          }
        }
        this.events.push(event);
        return;
      }
      note('ignored', 0, 'a frame that is neither ANSW nor EVT was ignored', String(text).slice(0, 80));
    }

    send(cmd, obj, params, seqWanted = true) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        throw new Error(this.closed || 'the WebSocket is not open');
      }
      const seq = seqWanted ? ++this.seq : 0;
      this.ws.send(JSON.stringify({ cmd, seq, obj, params: strings(params) }));
      return seq;
    }

    // The login query (no obj, the params inside `query`); the password goes nowhere else.
    sendLogin(user, password) {
      if (!this.ws || this.ws.readyState !== WebSocket.OPEN) {
        throw new Error(this.closed || 'the WebSocket is not open');
      }
      const seq = ++this.seq;
      const params = { sLogin: user, sPassword: password, iWebLogin: '1', sSSOSID: '', iSSO_CREATE_ASSOC: '0' };
      this.ws.send(JSON.stringify({ cmd: 'query', seq, query: { name: 'q_cplxLogin', params } }));
      return seq;
    }

    // send(), failing step `n` when the socket is gone.
    sendAt(n, cmd, obj, params) {
      try {
        return this.send(cmd, obj, params);
      } catch (e) {
        throw new StepError(n, `${cmd} could not be sent: ${e.message}`);
      }
    }

    // Waits for the answer to `seq`.
    answer(seq, n, cmd) {
      if (this.answers.has(seq)) {
        const a = this.answers.get(seq);
        this.answers.delete(seq);
        return Promise.resolve(a);
      }
      return this.wait({ seq }, n, `the answer to ${cmd} (seq ${seq})`, TIMEOUT.answer);
    }

    // Waits for an event for oneself (kept ones first); conf.webrtc.Disconnected fails the wait.
    event(name, n) {
      const i = this.events.findIndex((e) => e.name === name || e.name === 'conf.webrtc.Disconnected');
      const got = i >= 0 ? Promise.resolve(this.events.splice(i, 1)[0]) : this.wait({ event: name }, n, name, TIMEOUT.event);
      return got.then((e) => {
        if (e.name === 'conf.webrtc.Disconnected') {
          throw new StepError(n, `the core ended the media session (conf.webrtc.Disconnected${e.result.reason ? `: ${e.result.reason}` : ''})`);
        }
        return e;
      });
    }

    wait(what, n, label, ms) {
      if (this.closed) return Promise.reject(new StepError(n, `${this.closed} while waiting for ${label}`));
      return new Promise((resolve, reject) => {
        const w = { ...what };
        const timer = setTimeout(() => {
          this.waiters.delete(w);
          reject(new StepError(n, `timed out after ${ms} ms waiting for ${label}`));
        }, ms);
        w.resolve = (v) => {
          clearTimeout(timer);
          resolve(v);
        };
        w.reject = (reason) => {
          clearTimeout(timer);
          reject(new StepError(n, `${reason} while waiting for ${label}`));
        };
        this.waiters.add(w);
      });
    }

    close() {
      if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'bye');
    }
  }

  // Every param value as a string, as the protocol wants; absent ones left out.
  function strings(params) {
    const out = {};
    for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) out[k] = String(v);
    return out;
  }

  // A refusal in words: code, class and text.
  const refusal = (r) => `refused by the core: code ${r.code}${r.class ? ` (${r.class})` : ''}${r.text ? `: ${r.text}` : ''}`;

  // ---------------------------------------------------------------------------------------------
  // Step 9: what CALLME_S2 carries, out of the offer (as media::sdp::parse_offer)

  function parseOffer(sdp, n) {
    const session = [];
    let pts = null;
    const media = [];
    let inAudio = false;
    let seenMedia = false;
    for (const raw of sdp.split('\n')) {
      const line = raw.replace(/\s+$/, '');
      if (line.startsWith('m=')) {
        seenMedia = true;
        inAudio = pts === null && line.startsWith('m=audio ');
        if (inAudio) pts = line.slice(2).split(/\s+/).slice(3);
      } else if (!seenMedia) {
        session.push(line);
      } else if (inAudio) {
        media.push(line);
      }
    }
    const bad = (attr, reason) => new StepError(n, `offer unusable: ${attr}: ${reason}`);
    if (pts === null) throw bad('m=audio', 'the offer has no audio section');
    const attr = (name) => {
      const prefix = `a=${name}:`;
      const line = media.concat(session).find((l) => l.startsWith(prefix));
      return line === undefined ? null : line.slice(prefix.length).trim();
    };
    const need = (name) => {
      const v = attr(name);
      if (v === null) throw bad(`a=${name}`, 'missing from the offer');
      return v;
    };
    const iceChars = (name, v, min) => {
      if (v.length < min) throw bad(`a=${name}`, `${v.length} characters, at least ${min} needed`);
      if (!/^[A-Za-z0-9+/]+$/.test(v)) throw bad(`a=${name}`, 'has characters ICE does not allow');
    };
    const ufrag = need('ice-ufrag');
    iceChars('ice-ufrag', ufrag, 4);
    const pwd = need('ice-pwd');
    iceChars('ice-pwd', pwd, 22);
    const fp = need('fingerprint');
    const sp = fp.indexOf(' ');
    const fingerprint = sp < 0 ? fp : `${fp.slice(0, sp).toLowerCase()} ${fp.slice(sp + 1).trim().toUpperCase()}`;
    if (!/^sha-256 [0-9A-F]{2}(:[0-9A-F]{2}){31}$/.test(fingerprint)) {
      throw bad('a=fingerprint', `${JSON.stringify(fp)} is not "sha-256" and 32 colon-separated hex bytes`);
    }
    const mid = need('mid');

    let opusPt = null;
    for (const l of media) {
      const m = /^a=rtpmap:(\d+) (.*)$/.exec(l);
      if (m && m[2].toLowerCase().startsWith('opus/48000')) {
        opusPt = m[1];
        break;
      }
    }
    if (opusPt === null || !pts.includes(opusPt)) throw bad('a=rtpmap', 'no opus/48000 payload type in the audio section');
    const fmtpLine = media.find((l) => l.startsWith(`a=fmtp:${opusPt} `));
    const opusFmtp = fmtpLine ? fmtpLine.slice(`a=fmtp:${opusPt} `.length) : 'minptime=10;useinbandfec=1';

    const ext = (uri) => {
      for (const l of media) {
        if (!l.startsWith('a=extmap:')) continue;
        const parts = l.slice('a=extmap:'.length).split(/\s+/);
        const id = parts[0].split('/')[0];
        if (parts[1] === uri && /^\d+$/.test(id)) return id;
      }
      return null;
    };
    const ssrcLine = media.find((l) => l.startsWith('a=ssrc:'));
    const ssrcM = ssrcLine ? /^a=ssrc:(\d+)/.exec(ssrcLine) : null;
    let cname = null;
    for (const l of media) {
      const m = /^a=ssrc:\S+ cname:(.*)$/.exec(l);
      if (m) {
        cname = m[1];
        break;
      }
    }
    return {
      ufrag,
      pwd,
      fingerprint,
      mid,
      opusPt,
      opusFmtp,
      extAudioLevel: ext(EXT_AUDIO_LEVEL),
      extMid: ext(EXT_SDES_MID),
      ssrc: ssrcM ? ssrcM[1] : null,
      cname,
      bundle: session.some((l) => l.startsWith('a=group:BUNDLE')),
    };
  }

  // CALLME_S2's params (docs/protocol.md, wire::s2), all strings; absent optional ones left out.
  function s2Params(f) {
    const p = {
      ufrag: f.ufrag,
      pwd: f.pwd,
      fingerprint: f.fingerprint,
      mid: f.mid,
      opus_pt: f.opusPt,
      opus_fmtp: f.opusFmtp,
    };
    if (f.extAudioLevel !== null) p.ext_audio_level = f.extAudioLevel;
    if (f.extMid !== null) p.ext_mid = f.extMid;
    if (f.ssrc !== null) p.ssrc = f.ssrc;
    if (f.cname !== null) p.cname = f.cname;
    return p;
  }

  // ---------------------------------------------------------------------------------------------
  // Step 14/15: servufrag, and the core's answer written from it (as media::sdp::build_answer)

  function readServUfrag(result, n) {
    const d = result.EvtData;
    const at = 'EVT.result.EvtData';
    const bad = (field, reason) => new StepError(n, `malformed frame from the core: ${at}${field}: ${reason}`);
    if (!d || typeof d !== 'object') throw bad('', 'missing or not an object');
    const str = (k) => {
      if (d[k] === undefined) throw bad(`.${k}`, 'missing');
      if (typeof d[k] !== 'string') throw bad(`.${k}`, 'not a string');
      return d[k];
    };
    const ufrag = str('ufrag');
    if (ufrag.length < 4 || !/^[A-Za-z0-9+/]+$/.test(ufrag)) throw bad('.ufrag', 'not an ICE ufrag of at least 4 characters');
    const pwd = str('pwd');
    if (pwd.length < 22 || !/^[A-Za-z0-9+/]+$/.test(pwd)) throw bad('.pwd', 'not an ICE pwd of at least 22 characters');
    const fingerprint = str('fingerprint');
    if (!/^sha-256 [0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){31}$/i.test(fingerprint)) throw bad('.fingerprint', 'not "sha-256" and 32 colon-separated hex bytes');
    if (d.port === undefined) throw bad('.port', 'missing');
    const port = Number(d.port);
    if (!Number.isInteger(port) || port < 1 || port > 65535) throw bad('.port', 'not a port number (1-65535)');
    let addr = null;
    if (d.addr !== undefined && d.addr !== null) addr = str('addr');
    let candidates = [];
    if (d.candidates !== undefined && d.candidates !== null) {
      if (!Array.isArray(d.candidates)) throw bad('.candidates', 'not an array of strings');
      candidates = d.candidates.map((c, i) => {
        if (typeof c !== 'string' || !c.startsWith('candidate:')) throw bad(`.candidates[${i}]`, 'not a candidate: line');
        return c;
      });
    }
    return { ufrag, pwd, fingerprint, port, addr, candidates };
  }

  // The session id only has to be stable within one answer; derived from the core's ufrag the
  // same way the SDK derives it, so both write the same answer.
  function sessionId(ufrag) {
    const mask = (1n << 64n) - 1n;
    let h = 7n;
    for (const b of new TextEncoder().encode(ufrag)) h = (h * 31n + BigInt(b)) & mask;
    return (h >> 2n).toString();
  }

  function buildAnswer(offer, core, addr) {
    const ip = addr.includes(':') ? 'IP6' : 'IP4';
    const lines = [
      'v=0',
      `o=- ${sessionId(core.ufrag)} 2 IN ${ip} ${addr}`,
      's=-',
      't=0 0',
      'a=ice-lite',
    ];
    if (offer.bundle) lines.push(`a=group:BUNDLE ${offer.mid}`);
    lines.push(
      `m=audio ${core.port} UDP/TLS/RTP/SAVPF ${offer.opusPt}`,
      `c=IN ${ip} ${addr}`,
      `a=mid:${offer.mid}`,
      `a=ice-ufrag:${core.ufrag}`,
      `a=ice-pwd:${core.pwd}`,
      `a=fingerprint:${core.fingerprint}`,
      'a=setup:passive',
      'a=sendrecv',
      'a=rtcp-mux',
      `a=rtpmap:${offer.opusPt} opus/48000/2`,
      `a=fmtp:${offer.opusPt} ${offer.opusFmtp}`,
    );
    if (offer.extAudioLevel !== null) lines.push(`a=extmap:${offer.extAudioLevel} ${EXT_AUDIO_LEVEL}`);
    if (offer.extMid !== null) lines.push(`a=extmap:${offer.extMid} ${EXT_SDES_MID}`);
    if (core.candidates.length === 0) {
      lines.push(`a=candidate:1 1 udp 2130706431 ${addr} ${core.port} typ host`);
    } else {
      for (const c of core.candidates) lines.push(`a=${c}`);
    }
    lines.push('a=end-of-candidates');
    return lines.map((l) => `${l}\r\n`).join('');
  }

  // The address for the core's candidate: servufrag's addr, else the page's host.
  function candidateAddr(core) {
    if (core.addr) return core.addr;
    return location.hostname.replace(/^\[(.*)\]$/, '$1');
  }

  // ---------------------------------------------------------------------------------------------
  // What is heard: the remote audio through a WebAudio analyser

  let analyser = null;
  let audioCtx = null;

  function attachAnalyser(stream) {
    audioCtx = new AudioContext();
    const src = audioCtx.createMediaStreamSource(stream);
    analyser = audioCtx.createAnalyser();
    analyser.fftSize = 8192;
    analyser.smoothingTimeConstant = 0;
    analyser.minDecibels = -140;
    analyser.maxDecibels = 0;
    src.connect(analyser);
    // The element plays the audio; the analyser only listens, so it is not connected onward.
    return audioCtx.resume().catch(() => {});
  }

  // Below this the strongest bin is taken for silence (the analyser's floor is -140 dB).
  const SILENCE_DB = -100;

  // Averages the analyser's power spectrum over `ms` milliseconds and reports, for each of
  // `freqs`, its level in dB (absolute, as the analyser scales it) and relative to the
  // strongest bin between 50 Hz and 8 kHz. When all is silence the relative levels are -999.
  // `silent` tells that case apart.
  async function heard(ms = 1000, freqs = []) {
    if (!analyser) throw new Error('nothing to listen to: the join has not reached step 19');
    if (audioCtx.state !== 'running') await audioCtx.resume().catch(() => {});
    const bins = analyser.frequencyBinCount;
    const db = new Float32Array(bins);
    const power = new Float64Array(bins);
    let frames = 0;
    const until = performance.now() + ms;
    // One FFT window is fftSize / sampleRate long (about 170 ms); sampling every 50 ms overlaps.
    while (performance.now() < until) {
      analyser.getFloatFrequencyData(db);
      for (let i = 0; i < bins; i++) power[i] += Number.isFinite(db[i]) ? 10 ** (db[i] / 10) : 0;
      frames++;
      await new Promise((r) => setTimeout(r, 50));
    }
    const binHz = audioCtx.sampleRate / analyser.fftSize;
    const toDb = (p) => (p > 0 ? 10 * Math.log10(p / frames) : -Infinity);
    let peakBin = 0;
    const lo = Math.ceil(50 / binHz);
    const hi = Math.min(bins - 1, Math.floor(8000 / binHz));
    for (let i = lo; i <= hi; i++) if (power[i] > power[peakBin]) peakBin = i;
    const peakDb = toDb(power[peakBin]);
    const level = (hz) => {
      // The strongest of the bins around hz (a tone spreads over neighbouring bins).
      const c = Math.round(hz / binHz);
      let p = 0;
      for (let i = Math.max(0, c - 2); i <= Math.min(bins - 1, c + 2); i++) p = Math.max(p, power[i]);
      return toDb(p);
    };
    const round = (x) => (Number.isFinite(x) ? Math.round(x * 10) / 10 : -999);
    const out = {
      ms,
      frames,
      sampleRate: audioCtx.sampleRate,
      binHz: round(binHz * 10) / 10,
      peak: { hz: Math.round(peakBin * binHz), db: round(peakDb) },
      silent: !(peakDb >= SILENCE_DB),
      db: {},
      relative: {},
    };
    for (const hz of freqs) {
      const l = level(Number(hz));
      out.db[hz] = round(l);
      out.relative[hz] = round(peakDb >= SILENCE_DB ? l - peakDb : -Infinity);
    }
    callme.lastAnalysis = out;
    return out;
  }

  // For each of `freqs`, its level in dB relative to the strongest bin (0 for the strongest;
  // -999 for each when nothing is heard), measured over `ms` milliseconds.
  async function toneLevels(freqs, ms = 1000) {
    const a = await heard(ms, freqs);
    return a.relative;
  }

  // ---------------------------------------------------------------------------------------------
  // Logging in (q_cplxLogin): the form, and what its answer means

  const RETCODE = {
    2: 'login OK (user)',
    3: 'login OK (admin)',
    12: 'login OK (system administrator)',
    4: 'login error: unknown login or wrong password',
    5: 'low privileges',
  };
  const LOGIN_REQUIRED = 208;

  // The form's pending submission: resolved with {user, password}.
  let loginWanted = null;
  let loginGiven = null;

  // Shows the form (with `message`, if any) and waits for it to be submitted (or for
  // callme.login()).
  function askLogin(message) {
    const form = ui.byId('login');
    const err = ui.byId('login-error');
    if (err) {
      err.textContent = message || '';
      err.hidden = !message;
    }
    if (loginGiven) {
      const given = loginGiven;
      loginGiven = null;
      return Promise.resolve(given);
    }
    if (form) form.hidden = false;
    setStatus(message ? 'Log in again.' : 'Log in to join.');
    return new Promise((resolve) => {
      loginWanted = resolve;
    });
  }

  // Submits a login, from the form or a script.
  function submitLogin(user, password) {
    const given = { user: String(user), password: String(password) };
    const pw = ui.byId('login-password');
    if (pw) pw.value = '';
    if (loginWanted) {
      const resolve = loginWanted;
      loginWanted = null;
      resolve(given);
    } else {
      loginGiven = given;
    }
  }

  function hideLogin() {
    const form = ui.byId('login');
    if (form) form.hidden = true;
  }

  // The login answer's RETCODE and NAME, by the columns its fdefs name.
  function readLogin(a) {
    const r = a.result || {};
    if (Number(r.code) !== 0) throw new Error(`q_cplxLogin ${refusal(r)}`);
    const cols = Array.isArray(a.fdefs) ? a.fdefs.map((f) => f && f.name) : [];
    const row = Array.isArray(a.records) && Array.isArray(a.records[0]) ? a.records[0] : null;
    const at = cols.indexOf('RETCODE');
    if (!row || at < 0) throw new Error('q_cplxLogin: malformed answer: no RETCODE in ANSW.fdefs/ANSW.records');
    const retcode = Number(row[at]);
    const n = cols.indexOf('NAME');
    return { retcode, name: n >= 0 && typeof row[n] === 'string' ? row[n] : '' };
  }

  // Opens the WebSocket, logs in when asked to (or when the core wants it), and loads the
  // conference; returns the load answer's result.
  async function connectAndLoad(params, wsUrl) {
    let credentials = params.login ? await askLogin(null) : null;
    for (let attempt = 1; attempt <= 10; attempt++) {
      setStatus('Connecting to the core...');
      session = new Session(wsUrl);
      await session.open(3);
      note('pre', 0, 'open the WebSocket', `${wsUrl}, sub-protocol ${session.ws.protocol || 'none'}`);
      if (credentials) {
        let loginSeq;
        try {
          loginSeq = session.sendLogin(credentials.user, credentials.password);
        } catch (e) {
          throw new StepError(3, `q_cplxLogin could not be sent: ${e.message}`);
        }
        note('pre', 0, 'q_cplxLogin', `login ${credentials.user}`);
        credentials.password = null;
        let login;
        try {
          login = readLogin(await session.answer(loginSeq, 3, 'q_cplxLogin'));
        } catch (e) {
          session.close();
          credentials = await askLogin(e.message);
          continue;
        }
        const meaning = RETCODE[login.retcode] || 'a RETCODE this page does not know';
        if (![2, 3, 12].includes(login.retcode)) {
          note('error', 0, `login refused: RETCODE ${login.retcode} (${meaning})`);
          session.close();
          credentials = await askLogin(`Login refused: RETCODE ${login.retcode}, ${meaning}.`);
          continue;
        }
        callme.account = { retcode: login.retcode, name: login.name, role: meaning };
        note('pre', 0, 'q_cplxLogin', `RETCODE ${login.retcode} (${meaning}), ${login.name}`);
        hideLogin();
      }
      const name = callme.account && callme.account.name ? callme.account.name : params.name;
      const loadSeq = session.sendAt(3, 'load', 'cd', { ClusterID: params.cluster, SchemeID: params.scheme, NAME: name });
      const loaded = await session.answer(loadSeq, 3, 'cd.load');
      const lr = loaded.result || {};
      if (Number(lr.code) === LOGIN_REQUIRED && !credentials) {
        note('pre', 0, 'cd.load', 'the core wants a login');
        session.close();
        credentials = await askLogin(null);
        continue;
      }
      return lr;
    }
    throw new StepError(3, 'no login was accepted in 10 attempts');
  }

  // ---------------------------------------------------------------------------------------------
  // The roster (conf.changed applied in order), the chat, and acting in the conference

  let roster = [];

  function member(p) {
    return {
      id: String(p.PARTY_ID),
      index: Number(p.Index),
      name: typeof p.NAME === 'string' ? p.NAME : '',
      state: Number(p.State),
      micOn: Number(p.bMicOn) !== 0,
      talking: Number(p.bTalking || 0) !== 0,
    };
  }

  function setRoster(parties) {
    roster = (Array.isArray(parties) ? parties : []).map(member);
    roster.sort((a, b) => a.index - b.index);
    renderRoster();
  }

  // addParties inserts, updParties finds the entry by OldIndex (by the id when that matches
  // nothing) and stores it under Index, delParties removes by ID; an unknown ID changes nothing.
  function applyChanged(r) {
    for (const p of r.addParties || []) {
      const m = member(p);
      roster = roster.filter((x) => x.id !== m.id);
      roster.push(m);
    }
    for (const p of r.updParties || []) {
      const m = member(p);
      let i = -1;
      if (p.OldIndex !== undefined && p.OldIndex !== null) i = roster.findIndex((x) => x.index === Number(p.OldIndex) && x.id === m.id);
      if (i < 0) i = roster.findIndex((x) => x.id === m.id);
      if (i < 0) {
        callme.anomalies.push({ kind: 'updParties for an unknown party', id: m.id });
      } else {
        roster.splice(i, 1);
      }
      roster.push(m);
    }
    for (const d of r.delParties || []) {
      const id = String(d.ID);
      const before = roster.length;
      roster = roster.filter((x) => x.id !== id);
      if (roster.length === before) callme.anomalies.push({ kind: 'delParties for an unknown party', id });
    }
    roster.sort((a, b) => a.index - b.index);
    // A controller may have turned one's microphone off (or on): the track follows.
    const own = roster.find((x) => x.id === callme.party);
    if (own && own.micOn !== callme.micOn) {
      callme.micOn = own.micOn;
      if (mic) for (const t of mic.getAudioTracks()) t.enabled = own.micOn;
    }
    renderRoster();
  }

  function button(text, onClick, cls) {
    const b = document.createElement('button');
    b.type = 'button';
    b.textContent = text;
    if (cls) b.className = cls;
    b.addEventListener('click', () => {
      b.disabled = true;
      Promise.resolve(onClick()).catch((e) => showChatError(e.message)).finally(() => {
        b.disabled = false;
      });
    });
    return b;
  }

  function renderRoster() {
    const list = ui.byId('roster');
    if (!list) return;
    list.textContent = '';
    for (const p of roster) {
      const li = document.createElement('li');
      li.dataset.party = p.id;
      li.className = [p.id === callme.party ? 'me' : '', p.talking ? 'talking' : '', p.micOn ? '' : 'muted'].filter(Boolean).join(' ');
      const dot = document.createElement('span');
      dot.className = 'talk';
      dot.title = p.talking ? 'talking' : 'not talking';
      const name = document.createElement('span');
      name.className = 'name';
      name.textContent = p.name || `party ${p.id}`;
      const mic = document.createElement('span');
      mic.className = 'mic';
      mic.textContent = `${p.micOn ? 'mic on' : 'muted'}${p.state === 2 ? '' : ', no audio'}`;
      li.append(dot, name, mic);
      if (callme.control && p.id !== callme.party) {
        const actions = document.createElement('span');
        actions.className = 'actions';
        actions.append(button(p.micOn ? 'Mute' : 'Unmute', () => setMicOf(p.id, !p.micOn)), button('Remove', () => remove(p.id), 'danger'));
        li.append(actions);
      }
      list.appendChild(li);
    }
    const count = ui.byId('count');
    if (count) count.textContent = String(roster.length);
    const self = ui.byId('mute-self');
    if (self) self.textContent = callme.micOn ? 'Mute' : 'Unmute';
  }

  function addChat(r) {
    const line = {
      from: r.SenderID === undefined || r.SenderID === null ? null : String(r.SenderID),
      username: typeof r.username === 'string' ? r.username : '',
      msg: typeof r.msg === 'string' ? r.msg : '',
      color: typeof r.color === 'string' ? r.color : '',
      time: Number(r.time || 0),
    };
    callme.chat.push(line);
    const log = ui.byId('chat-log');
    if (!log) return;
    const li = document.createElement('li');
    const who = document.createElement('span');
    who.className = 'who';
    who.textContent = `${line.username || 'someone'}: `;
    if (/^#[0-9a-fA-F]{3,8}$/.test(line.color)) who.style.color = line.color;
    const text = document.createElement('span');
    text.textContent = line.msg;
    li.append(who, text);
    log.appendChild(li);
    log.scrollTop = log.scrollHeight;
  }

  function showChatError(text) {
    const el = ui.byId('chat-error');
    if (!el) return;
    el.textContent = text || '';
    el.hidden = !text;
  }

  // A command of the conference, answered: resolves on code 0, else fails with the refusal.
  async function request(cmd, params) {
    if (!session || callme.conference === null) throw new Error('not in a conference');
    const seq = session.send(cmd, 'conf', { ClusterID: callme.cluster, ID: callme.conference, ...params });
    const a = await session.answer(seq, 0, cmd);
    const r = a.result || {};
    if (Number(r.code) !== 0) throw new Error(`${cmd} ${refusal(r)}`);
    return r;
  }

  async function say(msg) {
    const r = await request('INSTANTMSG', { msg });
    showChatError('');
    return r;
  }

  // One's own microphone: the track is disabled at once (nothing is sent), and the core is told.
  async function setMic(on) {
    const before = callme.micOn;
    callme.micOn = Boolean(on);
    if (mic) for (const t of mic.getAudioTracks()) t.enabled = callme.micOn;
    renderRoster();
    try {
      return await request('SETMIC', { PartyID: callme.party, bMicOn: callme.micOn ? '1' : '0' });
    } catch (e) {
      callme.micOn = before;
      if (mic) for (const t of mic.getAudioTracks()) t.enabled = before;
      renderRoster();
      throw e;
    }
  }

  function setMicOf(id, on) {
    return request('SETMIC', { PartyID: String(id), bMicOn: on ? '1' : '0' });
  }

  function remove(id) {
    return request('DELPARTY', { PartyID: String(id) });
  }

  function wireControls() {
    const self = ui.byId('mute-self');
    if (self) {
      self.addEventListener('click', () => setMic(!callme.micOn).catch((e) => showChatError(e.message)));
    }
    const chat = ui.byId('chat-form');
    if (chat) {
      chat.addEventListener('submit', (ev) => {
        ev.preventDefault();
        const input = ui.byId('chat-input');
        const text = input ? input.value : '';
        if (!text) return;
        say(text).then(
          () => {
            if (input) input.value = '';
          },
          (e) => showChatError(e.message),
        );
      });
    }
    const login = ui.byId('login');
    if (login) {
      login.addEventListener('submit', (ev) => {
        ev.preventDefault();
        submitLogin(ui.byId('login-user').value, ui.byId('login-password').value);
      });
    }
  }

  // ---------------------------------------------------------------------------------------------
  // The join

  let started = false;
  let session = null;
  let mic = null;
  let s1Accepted = false;

  function cleanUp(reason) {
    if (callme.pc) {
      try {
        callme.pc.close();
      } catch (e) {
        /* already closed */
      }
    }
    if (mic) for (const t of mic.getTracks()) t.stop();
    if (session) {
      // The core may hold media state for the party: tell it, then close the session.
      if (s1Accepted && session.party !== null) {
        try {
          session.send('CALLME_BYE', 'conf', { ClusterID: callme.cluster, ID: callme.conference, PartyID: session.party }, false);
        } catch (e) {
          /* the socket is already gone */
        }
      }
      session.close();
    }
    const audio = ui.audio();
    if (audio) audio.srcObject = null;
    if (audioCtx) audioCtx.close().catch(() => {});
    analyser = null;
    setStatus(reason);
  }

  function fail(e) {
    const n = e instanceof StepError ? e.step : null;
    const text = n ? e.message : `${e && e.message ? e.message : String(e)}`;
    callme.error = text;
    callme.failedStep = n;
    note('error', n || 0, text);
    setError(`${text}. Reload the page to try again.`);
    cleanUp('Failed.');
    rejectDone(new Error(text));
  }

  // In the call: the end of the media, from whichever side.
  function endCall(reason) {
    if (callme.ended) return;
    callme.ended = reason;
    note('error', 0, `the call ended: ${reason}`);
    setError(`The call ended: ${reason}`);
    cleanUp('The call ended.');
  }

  // Runs `promise` (a media call) with the media timeout, failing step `n`.
  function timed(n, label, promise) {
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new StepError(n, `timed out after ${TIMEOUT.media} ms waiting for ${label}`)), TIMEOUT.media);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
  }

  const mediaError = (n, call, e) => (e instanceof StepError ? e : new StepError(n, `${call} failed: ${e && e.name ? `${e.name}: ` : ''}${e && e.message ? e.message : e}`));

  // Step 18: resolves with the track event once the track is there, the PeerConnection is
  // connected and the first packets have arrived; fails when the PeerConnection fails or the
  // media timeout passes.
  function remoteMedia(pc, remoteTrack) {
    return new Promise((resolve, reject) => {
      let ev = null;
      let unmuted = false;
      const states = () => `ICE ${pc.iceConnectionState}, connection ${pc.connectionState}`;
      const finish = (err) => {
        clearTimeout(timer);
        pc.removeEventListener('connectionstatechange', check);
        if (err) reject(err);
        else resolve(ev);
      };
      const check = () => {
        if (pc.connectionState === 'failed' || pc.connectionState === 'closed') {
          finish(new StepError(18, `the PeerConnection is ${pc.connectionState} (${states()})`));
        } else if (ev && unmuted && pc.connectionState === 'connected') {
          finish(null);
        }
      };
      const timer = setTimeout(() => {
        const what = !ev ? 'the remote track' : !unmuted ? 'the first packets of the remote track' : 'the connection';
        finish(new StepError(18, `timed out after ${TIMEOUT.media} ms waiting for ${what} (${states()})`));
      }, TIMEOUT.media);
      pc.addEventListener('connectionstatechange', check);
      remoteTrack.then((e) => {
        ev = e;
        unmuted = !e.track.muted;
        if (!unmuted) {
          e.track.addEventListener('unmute', () => {
            unmuted = true;
            check();
          }, { once: true });
        }
        check();
      });
    });
  }

  async function join() {
    t0 = performance.now();
    const params = readParams();
    if (params.scheme === null) throw new Error('no conference number: open the page with ?scheme=N (and &name=...); nothing was sent');
    callme.cluster = params.cluster;

    // Steps 1-2: the microphone. Nothing has been sent to the core yet.
    setStatus('Asking for the microphone...');
    step(1, 'audio: true');
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new StepError(1, 'getUserMedia is not available: the page must be served over https or from localhost');
    }
    try {
      mic = await navigator.mediaDevices.getUserMedia({ audio: true });
    } catch (e) {
      throw new StepError(1, `getUserMedia failed: ${e.name}: ${e.message}`);
    }
    const micTrack = mic.getAudioTracks()[0];
    if (!micTrack) throw new StepError(2, 'getUserMedia gave a stream without an audio track');
    step(2, micTrack.label || 'microphone');

    // Before the sequence: the WebSocket, the login when there is one, and cd.load for one's
    // own party.
    const wsUrl = `${location.protocol === 'https:' ? 'wss' : 'ws'}://${location.host}/ws`;
    const lr = await connectAndLoad(params, wsUrl);
    if (![0, 1, 2].includes(Number(lr.code))) throw new StepError(3, `cd.load ${refusal(lr)}`);
    if (lr.SVPartyID === undefined || !lr.confdata || lr.confdata.ID === undefined) {
      throw new StepError(3, 'cd.load: malformed answer: ANSW.result.SVPartyID or ANSW.result.confdata.ID missing');
    }
    session.party = String(lr.SVPartyID);
    callme.party = session.party;
    callme.conference = String(lr.confdata.ID);
    callme.control = Number(lr.bControl) === 1;
    note('pre', 0, 'cd.load', `code ${lr.code}, conference ${callme.conference}, own party ${session.party}${callme.control ? ', controls' : ''}`);
    setRoster(lr.parties);
    const room = ui.byId('room');
    if (room) room.hidden = false;
    const me = ui.byId('who-am-i');
    if (me) me.textContent = `${callme.account ? callme.account.name : params.name}${callme.control ? ' (controls the conference)' : ''}`;
    const own = { ClusterID: params.cluster, ID: callme.conference, PartyID: session.party };

    // Steps 3-5: CALLME_S1, its answer, servdesc.
    setStatus('Joining...');
    const s1Seq = session.sendAt(3, 'CALLME_S1', 'conf', own);
    step(3, `seq ${s1Seq}`);
    const s1 = await session.answer(s1Seq, 4, 'CALLME_S1');
    if (Number(s1.result && s1.result.code) !== 0) throw new StepError(4, refusal(s1.result || {}));
    s1Accepted = true;
    step(4, 'code 0');
    const servdesc = await session.event('conf.webrtc.servdesc', 5);
    const sd = servdesc.result.EvtData || {};
    for (const k of ['serveraddr', 'username', 'credential']) {
      if (typeof sd[k] !== 'string') throw new StepError(5, `malformed frame from the core: EVT.result.EvtData.${k}: missing or not a string`);
    }
    step(5, sd.serveraddr || 'no ICE server');

    // Steps 6-11: the PeerConnection, the offer, what CALLME_S2 needs, setLocalDescription.
    const config = { iceServers: sd.serveraddr ? [{ urls: sd.serveraddr, username: sd.username, credential: sd.credential }] : [] };
    if (params.relay) config.iceTransportPolicy = 'relay';
    let pc;
    try {
      pc = new RTCPeerConnection(config);
      callme.pc = pc;
      pc.addTrack(micTrack, mic);
    } catch (e) {
      throw mediaError(6, 'new RTCPeerConnection', e);
    }
    const remoteTrack = new Promise((resolve) => {
      pc.ontrack = (ev) => resolve(ev);
    });
    step(6, params.relay ? `${config.iceServers.length} ICE server(s), relay only` : `${config.iceServers.length} ICE server(s)`);

    step(7);
    let offer;
    try {
      offer = await timed(8, 'createOffer', pc.createOffer());
    } catch (e) {
      throw mediaError(8, 'createOffer', e);
    }
    step(8, `${offer.sdp.length} bytes of SDP`);

    callme.offerSdp = offer.sdp;
    const facts = parseOffer(offer.sdp, 9);
    step(9, `ufrag ${facts.ufrag}, mid ${facts.mid}, opus ${facts.opusPt}`);

    step(10);
    try {
      await timed(11, 'setLocalDescription', pc.setLocalDescription(offer));
    } catch (e) {
      throw mediaError(11, 'setLocalDescription', e);
    }
    step(11);

    // Steps 12-14: CALLME_S2, its answer, servufrag.
    callme.s2Params = s2Params(facts);
    const s2Seq = session.sendAt(12, 'CALLME_S2', 'conf', { ...own, ...callme.s2Params });
    step(12, `seq ${s2Seq}`);
    const s2 = await session.answer(s2Seq, 13, 'CALLME_S2');
    if (Number(s2.result && s2.result.code) !== 0) throw new StepError(13, refusal(s2.result || {}));
    step(13, 'code 0');
    const servufrag = await session.event('conf.webrtc.servufrag', 14);
    const core = readServUfrag(servufrag.result, 14);
    callme.servufrag = core;
    step(14, `port ${core.port}`);

    // Steps 15-17: the core's answer, setRemoteDescription.
    const addr = candidateAddr(core);
    const answerSdp = buildAnswer(facts, core, addr);
    callme.answerSdp = answerSdp;
    step(15, `candidate ${addr}:${core.port}`);
    step(16);
    try {
      await timed(17, 'setRemoteDescription', pc.setRemoteDescription({ type: 'answer', sdp: answerSdp }));
    } catch (e) {
      throw mediaError(17, 'setRemoteDescription', e);
    }
    step(17);

    // Step 18: the remote track, and the media actually flowing (ICE and DTLS done, and the
    // track unmuted by its first packets).
    setStatus('Connecting the audio...');
    let trackEvent;
    try {
      trackEvent = await remoteMedia(pc, remoteTrack);
    } catch (e) {
      throw mediaError(18, 'ontrack', e);
    }
    step(18, `track ${trackEvent.track.id.slice(0, 8)}, ICE ${pc.iceConnectionState}`);

    // Step 19: playback through the <audio> element (which Chrome needs before WebAudio gets
    // remote audio) and the analyser.
    const stream = trackEvent.streams && trackEvent.streams[0] ? trackEvent.streams[0] : new MediaStream([trackEvent.track]);
    const audio = ui.audio();
    let playing = 'playing';
    try {
      if (audio) {
        audio.srcObject = stream;
        await audio.play().catch((e) => {
          playing = `playback waits for a click (${e.name})`;
          const resume = () => {
            audio.play().catch(() => {});
            if (audioCtx) audioCtx.resume().catch(() => {});
          };
          document.addEventListener('click', resume, { once: true });
        });
      }
      await attachAnalyser(stream);
    } catch (e) {
      throw mediaError(19, 'attaching the audio', e);
    }
    step(19, playing);

    // In the call: the media may still end, from either side.
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === 'failed') endCall(`the PeerConnection failed (ICE ${pc.iceConnectionState})`);
    };
    session.onInCall = (e) => {
      if (e.name === 'conf.webrtc.Disconnected') endCall(`the core ended the media session${e.result.reason ? `: ${e.result.reason}` : ''}`);
    };
    session.onClose = (reason) => endCall(reason);
    setStatus(`In the call: conference ${callme.conference}, party ${callme.party}.`);
  }

  function callmeJoin() {
    if (started) return done;
    started = true;
    join().then(
      () => resolveDone(callme.steps),
      (e) => fail(e),
    );
    return done;
  }
  window.callmeJoin = callmeJoin;

  window.addEventListener('pagehide', () => {
    if (started && !callme.error && !callme.ended) {
      callme.ended = 'the page was closed';
      cleanUp('Left.');
    }
  });

  function start() {
    wireControls();
    let params;
    try {
      params = readParams();
    } catch (e) {
      started = true;
      fail(new Error(`${e.message}; nothing was sent`));
      return;
    }
    if (params.auto) callmeJoin();
    else setStatus('Ready: call window.callmeJoin() to join.');
  }

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
