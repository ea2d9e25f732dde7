#!/usr/bin/env python3
"""Scores recordings of looped speech against the speech sent, by PESQ (ITU-T P.862.2, wideband).

    score.py --ref sent.wav recording.wav [recording.wav ...]

Every file is 16-bit PCM; all are resampled to 16 kHz. A recording holds the sent speech looped,
from any point of the loop: the first whole loop is found by cross-correlation with the sent
speech, then each whole loop in the recording is scored on its own (PESQ aligns the delay within
a loop itself). Prints one JSON object: for each recording its MOS-LQO per loop and their median.
"""

import argparse
import json
import sys
import wave

import numpy as np
from scipy.signal import resample_poly
from pesq import pesq

RATE = 16000


def read(path):
    with wave.open(path, "rb") as w:
        if w.getsampwidth() != 2:
            sys.exit(f"{path}: only 16-bit PCM is read")
        rate, channels = w.getframerate(), w.getnchannels()
        x = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float64)
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    if rate != RATE:
        g = np.gcd(rate, RATE)
        x = resample_poly(x, RATE // g, rate // g)
    return x / 32768.0


def loops(ref, rec):
    """The starts of the whole loops of `ref` in `rec`."""
    n = len(ref)
    if len(rec) < 2 * n:
        return []
    head = rec[: 2 * n]
    size = 1 << int(np.ceil(np.log2(len(head) + n)))
    corr = np.fft.irfft(np.fft.rfft(head, size) * np.conj(np.fft.rfft(ref, size)), size)
    first = int(np.argmax(corr[:n]))
    return list(range(first, len(rec) - n + 1, n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", required=True)
    ap.add_argument("recordings", nargs="+")
    a = ap.parse_args()
    ref = read(a.ref)
    out = {}
    for path in a.recordings:
        rec = read(path)
        scores = []
        for start in loops(ref, rec):
            try:
                scores.append(round(float(pesq(RATE, ref, rec[start : start + len(ref)], "wb")), 3))
            except Exception as e:  # PESQ refuses a segment without speech in it
                print(f"{path} at {start / RATE:.2f} s: {e}", file=sys.stderr)
        out[path] = {"loops": scores, "median": float(np.median(scores)) if scores else None}
    json.dump(out, sys.stdout)
    print()


if __name__ == "__main__":
    main()
