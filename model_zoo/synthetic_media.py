"""Plausible raw media drawn from a seed: document pages, text lines, tables, photos, captchas, speech.

The third-party models ship without sample data and nothing may be downloaded at run time, so their
calibration and eval inputs are drawn here. Each generator imitates the statistics a real input has
after the package's own decoding (not after its normalisation): images are float32 RGB in [0, 255]
(light paper with dark ink strokes, smooth photo-like colour fields with objects and texture), audio is
float32 in [-1, 1] at 16 kHz (voiced syllables with harmonics, fricative bursts, pauses, a noise floor).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000


def _interp_matrix(size: int, coarse: int) -> np.ndarray:
    """Linear-interpolation weights (size x coarse) that stretch `coarse` points over `size` pixels."""
    position = np.linspace(0.0, coarse - 1.0, size)
    low = np.clip(np.floor(position).astype(int), 0, coarse - 1)
    high = np.clip(low + 1, 0, coarse - 1)
    frac = position - low
    weights = np.zeros((size, coarse), dtype=np.float32)
    weights[np.arange(size), low] += 1.0 - frac
    weights[np.arange(size), high] += frac
    return weights


def smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, channels: int = 3) -> np.ndarray:
    """A smooth random field (h, w, channels) in [0, 1]: random values on a coarse grid, interpolated."""
    coarse = rng.random((cells, cells, channels), dtype=np.float32)
    rows, cols = _interp_matrix(h, cells), _interp_matrix(w, cells)
    return np.einsum("hi,ijc,wj->hwc", rows, coarse, cols).astype(np.float32)


def _paper(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    tint = rng.uniform(218, 250) + rng.uniform(-6, 4, size=3)
    shading = (smooth_field(rng, h, w, 3, 1) - 0.5) * rng.uniform(6, 22)
    noise = rng.normal(0.0, rng.uniform(1.0, 4.0), size=(h, w, 1))
    return np.clip(tint + shading + noise, 0, 255).astype(np.float32)


def _ink(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.12:  # coloured ink: blue, red or green headings and stamps
        color = np.full(3, rng.uniform(20, 70))
        color[rng.integers(0, 3)] = rng.uniform(120, 200)
        return color.astype(np.float32)
    return np.full(3, rng.uniform(10, 75), dtype=np.float32) + rng.uniform(-5, 5, size=3).astype(np.float32)


def _glyph(img: np.ndarray, rng: np.random.Generator, x: int, y: int, gw: int, gh: int, ink: np.ndarray) -> None:
    """Two to four strokes (bars, hooks, diagonals) inside a gw x gh box: the texture of printed characters."""
    h, w = img.shape[:2]
    thick = max(1, int(round(gh * rng.uniform(0.07, 0.14))))
    for _ in range(int(rng.integers(2, 5))):
        kind = rng.integers(0, 4)
        if kind == 0:  # vertical bar
            x0 = x + int(rng.integers(0, max(1, gw - thick)))
            y0 = y + int(rng.integers(0, max(1, gh // 3)))
            y1 = y + gh - int(rng.integers(0, max(1, gh // 3)))
            img[max(y0, 0) : min(y1, h), max(x0, 0) : min(x0 + thick, w)] = ink
        elif kind == 1:  # horizontal bar
            y0 = y + int(rng.integers(0, max(1, gh - thick)))
            x0 = x + int(rng.integers(0, max(1, gw // 3)))
            x1 = x + gw - int(rng.integers(0, max(1, gw // 3)))
            img[max(y0, 0) : min(y0 + thick, h), max(x0, 0) : min(x1, w)] = ink
        else:  # diagonal, drawn as a run of small squares
            steps = max(gw, gh)
            sign = 1 if kind == 2 else -1
            for t in range(0, steps, max(1, thick // 2)):
                px = x + int(t * gw / steps)
                py = y + (int(t * gh / steps) if sign > 0 else gh - 1 - int(t * gh / steps))
                if 0 <= py < h and 0 <= px < w:
                    img[py : min(py + thick, h), px : min(px + thick, w)] = ink


def _text_run(img: np.ndarray, rng: np.random.Generator, x: int, y: int, width: int, height: int) -> None:
    """Words of glyphs along one line, starting at (x, y), at most `width` pixels long."""
    ink = _ink(rng)
    end = x + width
    while x < end - height:
        word_len = int(rng.integers(1, 9))
        for _ in range(word_len):
            gw = max(2, int(height * rng.uniform(0.45, 0.85)))
            if x + gw >= end:
                return
            _glyph(img, rng, x, y, gw, height, ink)
            x += gw + max(1, int(height * rng.uniform(0.05, 0.18)))
        x += max(3, int(height * rng.uniform(0.3, 0.7)))


def document_page(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A page or screenshot of text: paragraphs of ink lines, a heading, sometimes a photo block or rules."""
    img = _paper(rng, h, w)
    margin = int(w * rng.uniform(0.04, 0.12))
    y = int(h * rng.uniform(0.03, 0.1))
    line_h = int(rng.integers(max(8, h // 70), max(10, h // 28)))
    if rng.random() < 0.7:  # heading
        _text_run(img, rng, margin, y, int((w - 2 * margin) * rng.uniform(0.3, 0.8)), int(line_h * 1.6))
        y += int(line_h * 3)
    while y < h - margin - line_h:
        if rng.random() < 0.08:  # a figure or photo block
            bh = int(min(h - y - margin, rng.uniform(0.1, 0.3) * h))
            bw = int((w - 2 * margin) * rng.uniform(0.3, 1.0))
            if bh > 8:
                img[y : y + bh, margin : margin + bw] = photo(rng, bh, bw)
                y += bh + line_h
                continue
        if rng.random() < 0.06:  # a horizontal rule
            img[y : y + max(1, line_h // 10), margin : w - margin] = _ink(rng)
            y += line_h
        length = w - 2 * margin if rng.random() > 0.2 else int((w - 2 * margin) * rng.uniform(0.2, 0.9))
        _text_run(img, rng, margin, y, length, line_h)
        y += int(line_h * rng.uniform(1.4, 2.0))
        if rng.random() < 0.15:
            y += line_h  # paragraph gap
    return img


def text_line(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A cropped text line (as an OCR detector hands to the recognizer): glyphs filling ~60-85% of h."""
    img = _paper(rng, h, w)
    glyph_h = int(h * rng.uniform(0.6, 0.85))
    top = int(rng.integers(0, max(1, h - glyph_h)))
    _text_run(img, rng, int(rng.integers(1, max(2, h // 4))), top, w - 2, glyph_h)
    return img


def _grid_lines(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Positions of cells + 1 rules spanning most of `size`, cell widths varying around the mean."""
    widths = rng.uniform(0.5, 1.5, size=cells)
    span = size * rng.uniform(0.88, 0.98)
    start = (size - span) / 2
    edges = start + np.concatenate([[0.0], np.cumsum(widths) / widths.sum() * span])
    return np.clip(edges.astype(int), 0, size - 2)


def table_page(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A ruled table: grid lines (sometimes only horizontal ones) with short text in the cells."""
    img = _paper(rng, h, w)
    rows, cols = int(rng.integers(3, 12)), int(rng.integers(2, 7))
    ys = _grid_lines(rng, h, rows)
    xs = _grid_lines(rng, w, cols)
    ink = _ink(rng)
    full_grid = rng.random() < 0.7
    for y in ys:
        img[y : y + 2, xs[0] : xs[-1]] = ink
    if full_grid:
        for x in xs:
            img[ys[0] : ys[-1], x : x + 2] = ink
    for top, bottom in zip(ys[:-1], ys[1:], strict=True):
        cell_h = bottom - top
        line_h = max(4, min(int(cell_h * rng.uniform(0.3, 0.6)), int(rng.integers(12, 26))))
        for left, right in zip(xs[:-1], xs[1:], strict=True):
            if right - left > 2 * line_h and rng.random() < 0.85:
                pad = max(2, (cell_h - line_h) // 2)
                _text_run(img, rng, left + 3, top + pad, int((right - left - 6) * rng.uniform(0.4, 1.0)), line_h)
    return img


def photo(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A photo-like image: smooth colour regions, a few objects (some skin-toned), edges and sensor noise."""
    img = 255.0 * smooth_field(rng, h, w, int(rng.integers(2, 7)))
    yy, xx = np.mgrid[0:h, 0:w]
    for _ in range(int(rng.integers(1, 6))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.05, 0.35) * h, rng.uniform(0.05, 0.35) * w
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
        if rng.random() < 0.4:  # skin tones
            color = np.array([rng.uniform(170, 240), rng.uniform(120, 190), rng.uniform(90, 160)])
        else:
            color = rng.uniform(0, 255, size=3)
        shade = 0.75 + 0.5 * smooth_field(rng, h, w, 3, 1)
        img = np.where(inside[..., None], color * shade, img)
    texture = rng.normal(0.0, rng.uniform(2.0, 9.0), size=(h, w, 1)) + rng.normal(0.0, 2.0, size=(h, w, 3))
    brightness = rng.uniform(0.6, 1.15)
    return np.clip(img * brightness + texture, 0, 255).astype(np.float32)


def captcha(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A text captcha: noisy light background, 4-6 thick coloured glyphs, interference curves and dots."""
    img = 255.0 * (0.75 + 0.25 * smooth_field(rng, h, w, 4))
    n_chars = int(rng.integers(4, 7))
    slot = w // (n_chars + 1)
    for i in range(n_chars):
        gh = int(h * rng.uniform(0.45, 0.75))
        gw = int(slot * rng.uniform(0.6, 0.95))
        x = int(slot * (i + 0.5) + rng.integers(-slot // 4, slot // 4 + 1))
        y = int(rng.integers(0, max(1, h - gh)))
        _glyph(img, rng, x, y, gw, gh, rng.uniform(0, 160, size=3).astype(np.float32))
        _glyph(img, rng, x, y, gw, gh, rng.uniform(0, 160, size=3).astype(np.float32))
    xs = np.arange(w)
    for _ in range(int(rng.integers(1, 4))):  # interference curves
        ys = (h / 2 + rng.uniform(-h / 3, h / 3) * np.sin(xs * rng.uniform(0.02, 0.08) + rng.uniform(0, 6))).astype(int)
        ok = (ys >= 0) & (ys < h - 1)
        color = rng.uniform(0, 200, size=3)
        img[ys[ok], xs[ok]] = color
        img[ys[ok] + 1, xs[ok]] = color
    dots = rng.random((h, w)) < 0.02
    img[dots] = rng.uniform(0, 255, size=(int(dots.sum()), 3))
    return np.clip(img + rng.normal(0, 4, size=img.shape), 0, 255).astype(np.float32)


def speech(rng: np.random.Generator, n_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like audio: voiced syllables (harmonics of a drifting pitch), fricatives, pauses, a noise floor."""
    out = rng.normal(0.0, rng.uniform(0.0005, 0.006), size=n_samples)
    gain = rng.uniform(0.05, 0.5)
    position = int(rng.integers(0, sample_rate // 4))
    while position < n_samples:
        if rng.random() < 0.25:  # pause
            position += int(rng.uniform(0.1, 0.6) * sample_rate)
            continue
        length = int(rng.uniform(0.08, 0.3) * sample_rate)
        t = np.arange(length) / sample_rate
        envelope = np.hanning(length)
        if rng.random() < 0.2:  # fricative: high-passed noise
            noise = rng.normal(0.0, 1.0, size=length + 1)
            segment = 0.4 * np.diff(noise) * envelope
        else:
            f0 = rng.uniform(90, 260) * (1.0 + rng.uniform(-0.15, 0.15) * t / max(t[-1], 1e-3))
            phase = 2 * np.pi * np.cumsum(f0) / sample_rate
            formant = rng.uniform(400, 2500)
            segment = np.zeros(length)
            for k in range(1, 25):
                freq = k * float(f0.mean())
                if freq > sample_rate / 2:
                    break
                weight = np.exp(-(((freq - formant) / 900.0) ** 2)) + 0.3 / k
                segment += weight * np.sin(k * phase)
            segment *= envelope / max(np.max(np.abs(segment)), 1e-6)
        stop = min(n_samples, position + length)
        out[position:stop] += gain * rng.uniform(0.4, 1.0) * segment[: stop - position]
        position += length + int(rng.uniform(0.0, 0.08) * sample_rate)
    return np.clip(out, -1.0, 1.0).astype(np.float32)


def zipf_choice(
    rng: np.random.Generator, ids: np.ndarray, size: int | tuple[int, ...], exponent: float = 1.1
) -> np.ndarray:
    """Draw from `ids` with Zipf-like frequencies (earlier ids are more frequent), as characters in text are."""
    ranks = np.arange(1, len(ids) + 1, dtype=np.float64)
    weights = ranks**-exponent
    return rng.choice(ids, size=size, p=weights / weights.sum())
