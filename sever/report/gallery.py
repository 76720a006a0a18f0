"""The gallery: ``report/gallery.html``, every scored validation image with its truth and prediction.

Each image is one JPEG thumbnail in ``report/gallery/`` (truth outlined above, prediction below,
in class colours) and one record: its per-class Dice, the classes in the truth and in the
prediction, and its error kinds:

- ``missed``: a class in the truth that the prediction lacks (a missed defect);
- ``false alarm``: a class predicted that the truth lacks;
- ``wrong class``: a missed class whose true pixels the prediction marks as a false-alarm class
  (the defect was found, under the wrong name); that pair counts as this kind only.

The page is static HTML: the records are an inline JSON block, a small inline script filters
(class, error kind), sorts (Dice) and pages them; nothing is fetched but the thumbnails beside it.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from sever.utils.visualization import CLASS_COLOURS

GALLERY_DIR = "gallery"
THUMB_WIDTH = 640  # pixels of a thumbnail (truth above prediction)
THUMB_QUALITY = 80
PAGE_SIZE = 48
KINDS = ("missed", "false alarm", "wrong class")


@dataclass
class GalleryImage:
    """One image of the gallery (plain types: it is written as JSON).

    Attributes:
        name: the image file name; ``thumb``: its thumbnail, relative to the page.
        dice: per class Dice of the post-processed prediction.
        score: mean Dice over the classes in the truth or the prediction (None: neither has any).
        truth, predicted: class indices present in each.
        errors: ``[kind, class index]`` pairs (:data:`KINDS`); a wrong class names the true class.
            A third item, when present, is shown after the pair (a label issue's score).
        rank: the image's place in a ranking (0 first; the label-issues gallery's suspects), or None.
    """

    name: str
    thumb: str
    dice: list[float]
    score: float | None
    truth: list[int]
    predicted: list[int]
    errors: list[list]
    rank: int | None = None


def present_dice(dice: np.ndarray, truth: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``(N,)`` mean Dice over the classes present in the truth or the prediction; NaN where none is.

    ``dice`` float ``(N, C)``, ``truth`` and ``predicted`` bool ``(N, C)``.
    """
    involved = truth | predicted
    with np.errstate(invalid="ignore"):
        return np.where(involved.any(1), (dice * involved).sum(1) / np.maximum(involved.sum(1), 1), np.nan)


def error_kinds(pred: np.ndarray, truth: np.ndarray) -> list[list]:
    """The error kinds of one image: ``[kind, class]`` pairs from masks ``(C, H, W)`` (nonzero = defect)."""
    predicted, present = pred.reshape(len(pred), -1).any(1), truth.reshape(len(truth), -1).any(1)
    missed = [c for c in range(len(pred)) if present[c] and not predicted[c]]
    alarms = [c for c in range(len(pred)) if predicted[c] and not present[c]]
    errors, renamed = [], set()
    for c in missed:
        wrong = [k for k in alarms if np.logical_and(pred[k] != 0, truth[c] != 0).any()]
        errors.append(["wrong class", c] if wrong else ["missed", c])
        renamed.update(wrong)
    errors += [["false alarm", k] for k in alarms if k not in renamed]
    return errors


def thumbnail(truth_drawn: np.ndarray, prediction_drawn: np.ndarray, path: Path) -> None:
    """Write truth above prediction (both ``(H, W, 3)`` uint8 RGB), shrunk to :data:`THUMB_WIDTH`, as JPEG."""
    gap = np.full((6, truth_drawn.shape[1], 3), 255, np.uint8)
    pair = np.concatenate([truth_drawn, gap, prediction_drawn])
    if pair.shape[1] > THUMB_WIDTH:
        height = max(1, round(pair.shape[0] * THUMB_WIDTH / pair.shape[1]))
        pair = cv2.resize(pair, (THUMB_WIDTH, height), interpolation=cv2.INTER_AREA)
    cv2.imwrite(str(path), cv2.cvtColor(pair, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, THUMB_QUALITY])


def gallery_image(name: str, dice: np.ndarray, pred: np.ndarray, truth: np.ndarray, thumb: str) -> GalleryImage:
    """The record of one image from its per-class ``dice (C,)`` and masks ``(C, H, W)``."""
    predicted, present = pred.reshape(len(pred), -1).any(1), truth.reshape(len(truth), -1).any(1)
    score = present_dice(dice[None], present[None], predicted[None])[0]
    return GalleryImage(name, thumb, [round(float(d), 4) for d in dice], None if np.isnan(score) else round(float(score), 4),
                        np.flatnonzero(present).tolist(), np.flatnonzero(predicted).tolist(), error_kinds(pred, truth))


_STYLE = """body{font-family:sans-serif;margin:1.5em;color:#222}
#controls{position:sticky;top:0;background:#fff;padding:0.5em 0;border-bottom:1px solid #ccc}
#cards{display:flex;flex-wrap:wrap;gap:12px;margin-top:1em}
.card{width:330px;border:1px solid #ccc;padding:4px;font-size:0.8em}
.card img{width:100%;display:block}.err{color:#b00}
.swatch{display:inline-block;width:0.8em;height:0.8em;margin-right:0.2em}"""

# The inline script: reads the records, keeps the ones the filters pass, sorts them and shows one page.
_SCRIPT = """
const RECORDS = JSON.parse(document.getElementById('records').textContent);
const CLASSES = JSON.parse(document.getElementById('classes').textContent);
const PAGE = %d;
let page = 0;
const $ = id => document.getElementById(id);
function passes(r) {
  const c = $('class').value, kind = $('kind').value;
  if (c !== 'all' && !r.truth.includes(+c) && !r.predicted.includes(+c)) return false;
  if (kind === 'any error') return r.errors.length > 0;
  if (kind === 'correct') return r.errors.length === 0;
  if (kind !== 'all') return r.errors.some(e => e[0] === kind && (c === 'all' || e[1] === +c));
  return true;
}
function value(r) { return r.score === null ? 2 : r.score; }
function ordered() {
  const shown = RECORDS.filter(passes), how = $('sort').value;
  if (how === 'rank') shown.sort((a, b) => a.rank - b.rank);
  else if (how === 'name') shown.sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0);
  else shown.sort((a, b) => (value(a) - value(b)) * (how === 'dice-' ? -1 : 1) || (a.name < b.name ? -1 : 1));
  return shown;
}
function card(r) {
  const div = document.createElement('div');
  div.className = 'card';
  div.dataset.name = r.name;
  const img = document.createElement('img');
  img.src = r.thumb; img.alt = r.name;
  const title = document.createElement('div');
  title.textContent = r.name + ' \\u2014 Dice ' + (r.score === null ? 'n/a (nothing true or predicted)' : r.score.toFixed(3));
  const per = document.createElement('div');
  per.textContent = r.dice.map((d, c) => CLASSES[c] + ' ' + d.toFixed(3)).join(' | ');
  div.append(img, title, per);
  if (r.errors.length) {
    const errs = document.createElement('div');
    errs.className = 'err';
    errs.textContent = r.errors.map(e => e[0] + ': ' + CLASSES[e[1]] + (e.length > 2 ? ' ' + e[2] : '')).join(', ');
    div.append(errs);
  }
  return div;
}
function render() {
  const shown = ordered(), pages = Math.max(1, Math.ceil(shown.length / PAGE));
  page = Math.min(page, pages - 1);
  $('cards').replaceChildren(...shown.slice(page * PAGE, (page + 1) * PAGE).map(card));
  $('status').textContent = shown.length + ' of ' + RECORDS.length + ' images, page ' + (page + 1) + ' of ' + pages;
  $('prev').disabled = page === 0; $('next').disabled = page >= pages - 1;
}
for (const id of ['class', 'kind', 'sort']) $(id).addEventListener('change', () => { page = 0; render(); });
$('prev').addEventListener('click', () => { page -= 1; render(); });
$('next').addEventListener('click', () => { page += 1; render(); });
render();
"""


def _json_block(element_id: str, value) -> str:
    text = json.dumps(value).replace("</", "<\\/")  # "</" cannot end the block early; JSON reads "<\\/" as "</"
    return f"<script type='application/json' id='{element_id}'>{text}</script>"


def _options(values: Sequence[tuple[str, str]]) -> str:
    return "".join(f"<option value='{html.escape(v)}'>{html.escape(label)}</option>" for v, label in values)


def write_gallery(records: Sequence[GalleryImage], class_names: Sequence[str], folder: Path, note: str,
                  kinds: Sequence[str] = KINDS, title: str = "Validation gallery") -> Path:
    """Write ``folder/gallery.html`` over ``records`` (their thumbnails already under ``folder``).

    ``kinds``: the error kinds the filter offers; records with a ``rank`` are first shown in its order.
    """
    ranked = [("rank", "rank, most suspect first")] if records and all(r.rank is not None for r in records) else []
    legend = "".join(f"<span class='swatch' style='background:rgb{tuple(int(v) for v in CLASS_COLOURS[c % len(CLASS_COLOURS)])}'>"
                     f"</span>{html.escape(name)} " for c, name in enumerate(class_names))
    controls = (
        f"<label>class <select id='class'>{_options([('all', 'all'), *((str(c), n) for c, n in enumerate(class_names))])}"
        f"</select></label> <label>error <select id='kind'>"
        f"{_options([(k, k) for k in ('all', 'any error', *kinds, 'correct')])}</select></label> "
        f"<label>sort <select id='sort'>{_options([*ranked, ('dice+', 'Dice, worst first'), ('dice-', 'Dice, best first'), ('name', 'name')])}"
        f"</select></label> <button id='prev'>previous</button> <button id='next'>next</button> <span id='status'></span>")
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
            f"<title>sever gallery</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(note)} Each picture: truth outlined above, prediction below. Dice: mean over the "
            f"classes in the truth or the prediction. Class colours: {legend}</p>"
            f"<div id='controls'>{controls}</div><div id='cards'></div>"
            f"{_json_block('records', [asdict(r) for r in records])}{_json_block('classes', list(class_names))}"
            f"<script>{_SCRIPT % PAGE_SIZE}</script></body></html>")
    index = folder / "gallery.html"
    index.write_text(page, encoding="utf-8")
    return index
