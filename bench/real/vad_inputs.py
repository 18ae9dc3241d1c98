"""Calibration / evaluation inputs for Silero VAD (the `silero-vad` wheel's ONNX files).

Synthetic 16 kHz audio: speech-like segments (source-filter: a pulse train whose pitch
drifts between 100 and 250 Hz through vowel formants, syllable envelopes, plus noise)
alternating with silence / noise segments. The stream is cut into the model's
window: 512 new samples per chunk, with the 64 samples before it prepended as context
(576 in all, what `silero_vad.OnnxWrapper` feeds the v5+ models at 16 kHz).

    python bench/real/vad_inputs.py OUT_DIR [--model silero_vad.onnx] [--n-calib 128] [--n-eval 512]

writes OUT_DIR/vad_calib.npz, OUT_DIR/vad_eval.npz (keys: the model's input names; the
state, zeros, as [N, 2, 128]: samples on axis 0 as the calibration contract asks, see
the report of session s11vad) and OUT_DIR/vad_stream.npz (the evaluation chunks in
stream order with their speech/no-speech ground truth, for a stateful run). Inputs the
model has that are rank 0 (`sr`) cannot be calibrated (calib.py refuses them); they are
written as a 1-D array of N copies when --with-sr is given, so the refusal can be seen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

SR = 16000
CHUNK = 512
CONTEXT = 64


VOWELS = [(730, 1090, 2440), (270, 2290, 3010), (300, 870, 2240), (530, 1840, 2480),
          (570, 840, 2410), (660, 1720, 2410)]  # F1-F3 of a few English vowels


def _iir2(b0: float, a1: float, a2: float, x: np.ndarray) -> np.ndarray:
    y = np.zeros(len(x))
    y1 = y2 = 0.0
    for i, xi in enumerate(x):
        yi = b0 * xi - a1 * y1 - a2 * y2
        y2, y1 = y1, yi
        y[i] = yi
    return y


def _resonator(x: np.ndarray, f: float, bw: float) -> np.ndarray:
    r = np.exp(-np.pi * bw / SR)
    return _iir2(1 - r, -2 * r * np.cos(2 * np.pi * f / SR), r * r, x)


def speech(rng: np.random.Generator, n: int) -> np.ndarray:
    """Source-filter speech: a glottal pulse train whose pitch (100-250 Hz) drifts slowly,
    through three formant resonators, one vowel per syllable (0.12-0.3 s, sine envelope),
    some syllables with a fricative onset, plus noise. (Plain harmonic stacks were not
    detected as speech by the model: 2% of chunks above 0.5.)"""
    out = np.zeros(n)
    pos = 0
    f0base = rng.uniform(100, 250)
    while pos < n:
        k = min(int(rng.uniform(0.12, 0.3) * SR), n - pos)
        t = np.arange(k) / SR
        f0 = np.clip(f0base * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 3) * t + rng.uniform(0, 6.3))),
                     100, 250)
        ph = np.cumsum(f0) / SR
        pulses = (np.diff(np.floor(ph), prepend=0) > 0).astype(float)
        src = _iir2(1.0, -0.97, 0.0, pulses)
        y = sum(_resonator(src, f, bw) * g
                for f, bw, g in zip(VOWELS[rng.integers(len(VOWELS))], (80, 100, 120), (1, 0.6, 0.3)))
        seg = y * np.sin(np.pi * np.arange(k) / max(k, 1)) ** 0.5
        if rng.random() < 0.4:
            m = min(k, int(0.05 * SR))
            seg[:m] += _resonator(rng.normal(0, 1, m), 4000, 2000) * 0.3 * np.abs(y).max()
        out[pos:pos + k] = seg
        pos += k
    out = out / (np.abs(out).max() + 1e-9) * rng.uniform(0.2, 0.6)
    return out + rng.normal(0, rng.uniform(0.001, 0.01), n)


def nonspeech(rng: np.random.Generator, n: int) -> np.ndarray:
    kind = rng.integers(3)
    if kind == 0:  # near silence
        return rng.normal(0, rng.uniform(1e-4, 2e-3), n)
    if kind == 1:  # white noise
        return rng.normal(0, rng.uniform(0.005, 0.05), n)
    # brown-ish noise (hum, rumble)
    x = np.cumsum(rng.normal(0, 1, n))
    x = x - np.convolve(x, np.ones(400) / 400, mode="same")
    return x / (np.abs(x).max() + 1e-9) * rng.uniform(0.01, 0.1)


def stream(rng: np.random.Generator, n_chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """Audio of n_chunks * CHUNK + CONTEXT samples and a per-chunk speech label."""
    total = n_chunks * CHUNK + CONTEXT
    audio, label = [], []
    while sum(len(a) for a in audio) < total:
        is_speech = len(audio) % 2 == 0 if rng.random() < 0.8 else rng.random() < 0.5
        n = int(rng.uniform(0.3, 1.5) * SR)
        audio.append((speech if is_speech else nonspeech)(rng, n))
        label.append(np.full(n, is_speech))
    a = np.concatenate(audio)[:total].astype(np.float32)
    lab = np.concatenate(label)[:total]
    chunk_lab = np.array([lab[CONTEXT + i * CHUNK: CONTEXT + (i + 1) * CHUNK].mean() > 0.5
                          for i in range(n_chunks)])
    return a, chunk_lab


def windows(a: np.ndarray, n_chunks: int) -> np.ndarray:
    return np.stack([a[i * CHUNK: i * CHUNK + CONTEXT + CHUNK] for i in range(n_chunks)])


def arrays(x: np.ndarray, with_sr: bool) -> dict[str, np.ndarray]:
    out = {"input": x, "state": np.zeros((len(x), 2, 128), np.float32)}
    if with_sr:
        out["sr"] = np.full(len(x), SR, np.int64)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--n-calib", type=int, default=128)
    ap.add_argument("--n-eval", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--with-sr", action="store_true")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    ca, _ = stream(rng, args.n_calib * 4)
    cx = windows(ca, args.n_calib * 4)[rng.permutation(args.n_calib * 4)[: args.n_calib]]
    np.savez(args.out / "vad_calib.npz", **arrays(cx, args.with_sr))
    ea, elab = stream(np.random.default_rng(args.seed + 1000), args.n_eval)
    ex = windows(ea, args.n_eval)
    np.savez(args.out / "vad_eval.npz", **arrays(ex, args.with_sr))
    np.savez(args.out / "vad_stream.npz", audio=ea, windows=ex, label=elab)
    print(f"calib {cx.shape}, eval {ex.shape} ({elab.mean():.2f} speech chunks) -> {args.out}")


if __name__ == "__main__":
    main()
