"""Synthetic 3-axis accelerometer windows for the HAR demo model (numpy only).

This module is the single source of truth for the generator used to train
models/har_accel_*.tflite and to make tests/fixtures/har_accel_*.json. The exact
specification (also reproduced in models/README.md, "Synthetic accelerometer
generator") is:

  window     N = 128 samples, fs = 50 Hz, t_i = i / 50 s for i = 0..127
  output     float32 array [128, 3], columns (x, y, z), unit g (1 g = 9.80665 m/s^2)
  labels     0 idle, 1 walking, 2 running, 3 fall
  U(a, b)    uniform real in [a, b);  N(0, s) Gaussian, mean 0, std-dev s,
             drawn independently per sample and axis
  final step every value is clamped to [-8, +8] g, then cast to float32

  idle:     a_i = (0, 0, 1) + b + n_i
            b = (bx, by, bz), each U(-0.05, 0.05), constant over the window
            n_i ~ N(0, 0.02)
  walking / running (same formula, different ranges):
            w = 2*pi*f, theta = w*t_i + phi
            x_i = 0.40 * A * cos(theta)
            y_i = 0.25 * A * sin(theta / 2)
            z_i = 1 + A * sin(theta)
            a_i = (x_i, y_i, z_i) + b + n_i
            b as for idle (each axis U(-0.05, 0.05))
            walking: f ~ U(1.6, 2.4) Hz, A ~ U(0.20, 0.40) g, phi ~ U(0, 2*pi), n ~ N(0, 0.05)
            running: f ~ U(2.6, 3.4) Hz, A ~ U(0.90, 1.50) g, phi ~ U(0, 2*pi), n ~ N(0, 0.10)
  fall:     k      ~ uniform integer in [32, 96] (inclusive), the impact sample
            P      ~ U(3.5, 6.0) g, the peak magnitude
            tilt   ~ U(60, 120) degrees, az ~ U(0, 360) degrees
            u = (sin(tilt)cos(az), sin(tilt)sin(az), cos(tilt))   (unit; new gravity direction)
            i <  k-2          : a_i = (0, 0, 1) + n_i                       (quiet, upright)
            k-2 <= i <= k+2   : a_i = P * (1 - |i-k|/3) * u + n_i            (impact spike:
                                 P/3, 2P/3, P, 2P/3, P/3 along u; |a_k| = P > 3 g)
            i >  k+2          : a_i = u + n_i                               (lying, new orientation)
            n_i ~ N(0, 0.03)

Draw order with a numpy Generator (only needed to reproduce the exact windows of
this repository; any RNG with the same distributions gives equivalent data):
  idle:    b = rng.uniform(-0.05, 0.05, 3); n = rng.normal(0, 0.02, (128, 3))
  walk/run: f = rng.uniform(lo, hi); A = rng.uniform(lo, hi); phi = rng.uniform(0, 2*pi);
           b = rng.uniform(-0.05, 0.05, 3); n = rng.normal(0, sigma, (128, 3))
  fall:    k = rng.integers(32, 97); P = rng.uniform(3.5, 6.0);
           tilt = rng.uniform(60, 120); az = rng.uniform(0, 360); n = rng.normal(0, 0.03, (128, 3))
Maths is done in float64, the result is cast to float32 at the end.
"""
import numpy as np

LABELS = ["idle", "walking", "running", "fall"]
N = 128
FS = 50.0
CLAMP_G = 8.0

PERIODIC = {
    # label: (f_lo, f_hi, A_lo, A_hi, noise_sigma)
    "walking": (1.6, 2.4, 0.20, 0.40, 0.05),
    "running": (2.6, 3.4, 0.90, 1.50, 0.10),
}


def gen_window(label: str, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(N, dtype=np.float64) / FS
    if label == "idle":
        b = rng.uniform(-0.05, 0.05, 3)
        n = rng.normal(0.0, 0.02, (N, 3))
        a = np.array([0.0, 0.0, 1.0]) + b + n
    elif label in PERIODIC:
        f_lo, f_hi, a_lo, a_hi, sigma = PERIODIC[label]
        f = rng.uniform(f_lo, f_hi)
        amp = rng.uniform(a_lo, a_hi)
        phi = rng.uniform(0.0, 2.0 * np.pi)
        b = rng.uniform(-0.05, 0.05, 3)
        n = rng.normal(0.0, sigma, (N, 3))
        theta = 2.0 * np.pi * f * t + phi
        a = np.stack(
            [0.40 * amp * np.cos(theta), 0.25 * amp * np.sin(theta / 2.0), 1.0 + amp * np.sin(theta)],
            axis=1,
        ) + b + n
    elif label == "fall":
        k = int(rng.integers(32, 97))
        peak = rng.uniform(3.5, 6.0)
        tilt = np.deg2rad(rng.uniform(60.0, 120.0))
        az = np.deg2rad(rng.uniform(0.0, 360.0))
        n = rng.normal(0.0, 0.03, (N, 3))
        u = np.array([np.sin(tilt) * np.cos(az), np.sin(tilt) * np.sin(az), np.cos(tilt)])
        a = np.empty((N, 3))
        for i in range(N):
            if i < k - 2:
                a[i] = (0.0, 0.0, 1.0)
            elif i <= k + 2:
                a[i] = peak * (1.0 - abs(i - k) / 3.0) * u
            else:
                a[i] = u
        a = a + n
    else:
        raise ValueError(f"unknown label {label!r}")
    return np.clip(a, -CLAMP_G, CLAMP_G).astype(np.float32)


def gen_dataset(n_per_class: int, seed: int):
    """Balanced data set: returns (x [n*4,128,3] float32, y [n*4] int64), shuffled."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for _ in range(n_per_class):
        for ci, lab in enumerate(LABELS):
            xs.append(gen_window(lab, rng))
            ys.append(ci)
    x = np.stack(xs)
    y = np.array(ys, dtype=np.int64)
    perm = rng.permutation(len(y))
    return x[perm], y[perm]
