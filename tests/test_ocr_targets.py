"""Dense reading targets for the tiny tower's pretraining: every drawn character lands in the
pooled cell that covers its pixels, in reading order, through the same crop plan as the image transform."""
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from molora.config import MoLoRAConfig
from molora.encoders.image_transform import ImageTransform
from molora.synthetic.charts import draw_chart
from molora.synthetic.documents import draw_document
from molora.synthetic.draw import Canvas
from molora.synthetic.ocr import CHARSET, NUM_CLASSES, cell_targets, cell_text, char_boxes, char_class

V = MoLoRAConfig.preset("tiny").vision


@pytest.mark.parametrize("kind", ["form", "receipt", "table", "chart"])
def test_every_character_is_in_exactly_one_cell(kind):
    page = draw_chart(random.Random(3)) if kind == "chart" else draw_document(random.Random(3), kind)
    cells = cell_text(page.labels, *page.image.size, V.image_size, V.patch_size, V.dynamic_hd)
    drawn = sorted(ch for lab in page.labels for ch in lab.text if not ch.isspace())
    assert sorted("".join(cells.values())) == drawn


def test_character_centres_lie_inside_the_ink_box():
    page = draw_document(random.Random(5), "receipt")
    for lab in page.labels:
        boxes = char_boxes(lab)
        assert "".join(b.char for b in boxes) == lab.text.replace(" ", "")
        xs = [b.cx for b in boxes]
        assert xs == sorted(xs)
        for b in boxes:
            assert lab.box[0] - 1 <= b.cx <= lab.box[2] + 1 and lab.box[1] <= b.cy <= lab.box[3]


def test_a_field_reads_back_from_its_cells_in_order():
    """A string drawn at a known place: the cells it crosses, read left to right, spell it."""
    c = Canvas(300, 100)
    c.text((30, 40), "Total 81.25", 14)
    cells = cell_text(c.labels, 300, 100, V.image_size, V.patch_size, V.dynamic_hd)
    cell = 2 * V.patch_size
    assert {r for r, _ in cells} == {(40 + 7) // cell}
    assert "".join(cells[k] for k in sorted(cells, key=lambda rc: rc[1])) == "Total81.25"


def test_targets_match_the_cell_text_and_the_tower_grid():
    page = draw_document(random.Random(7), "table")
    w, h = page.image.size
    t = cell_targets(page.labels, w, h, V.image_size, V.patch_size, V.dynamic_hd, slots=6)
    out = ImageTransform(V)(page.image)
    g = (V.image_size // V.patch_size + 1) // 2
    H, W = (int(x) for x in out["image_sizes"][0])
    assert t.shape == (H // V.image_size * g, W // V.image_size * g, 6)  # the sub-crop grid, cell for cell
    for (r, col), text in cell_text(page.labels, w, h, V.image_size, V.patch_size, V.dynamic_hd).items():
        ids = t[r, col].tolist()
        assert ids[: min(len(text), 6)] == [char_class(ch) for ch in text[:6]]
        assert all(i == 0 for i in ids[len(text):])
    assert int((t > 0).sum()) == sum(min(len(s), 6) for s in
                                     cell_text(page.labels, w, h, V.image_size, V.patch_size, V.dynamic_hd).values())


def test_resized_pages_map_through_the_resize():
    """A page larger than dynamic_hd crops is resized by the transform; its characters follow."""
    c = Canvas(900, 700)
    c.text((850, 650), "Z", 20)
    t = cell_targets(c.labels, 900, 700, V.image_size, V.patch_size, V.dynamic_hd)
    plan = ImageTransform(V).plan(900, 700)
    r, col = (t[..., 0] == char_class("Z")).nonzero()[0].tolist()
    scale = plan.new_width / 900
    cell = 2 * V.patch_size
    assert (r, col) == (int((c.labels[0].box[1] + c.labels[0].box[3]) / 2 * scale // cell),
                        int(char_boxes(c.labels[0])[0].cx * scale // cell))


@settings(max_examples=50, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=400), max_size=8))
def test_char_classes_cover_printable_ascii_and_flag_the_rest(text):
    for ch in text:
        k = char_class(ch)
        assert 1 <= k < NUM_CLASSES
        assert (k == NUM_CLASSES - 1) == (ch not in CHARSET)
    assert len(set(char_class(ch) for ch in CHARSET)) == len(CHARSET)
    assert torch.tensor([char_class(ch) for ch in CHARSET]).max() == NUM_CLASSES - 2


def test_dense_reading_loss_trains_the_tower():
    """The pretraining's reading objective (molora/pretraining/ocr.py): gradients reach the tower and a
    few steps on two fixed pages cut the loss (the head and the tower fit them)."""
    from molora import MoLoRAModel, MoLoRAProcessor
    from molora.pretraining import ocr_batch

    torch.manual_seed(0)
    cfg = MoLoRAConfig.preset("tiny")
    model, proc = MoLoRAModel(cfg), MoLoRAProcessor.from_config(cfg)
    pages = [draw_document(random.Random(1), "receipt"), draw_chart(random.Random(2))]
    head = torch.nn.Sequential(torch.nn.Linear(cfg.vision.hidden_size, 64), torch.nn.GELU(),
                               torch.nn.Linear(64, 6 * NUM_CLASSES))
    params = list(model.image_embed.img_processor.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    first = None
    for _ in range(40):
        loss, acc, exact = ocr_batch(model, proc, head, pages, 6)
        opt.zero_grad()
        loss.backward()
        assert model.image_embed.img_processor.embeddings.patch_embedding.weight.grad.abs().sum() > 0
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.5 * first and 0.0 <= acc <= 1.0 and 0.0 <= exact <= 1.0


def test_reading_crops_answer_is_the_drawn_text():
    """The crops curriculum's rows: a small crop of a page and exactly the string(s) drawn in it."""
    from molora.pretraining import reading_crops

    rows = reading_crops(12, seed=3)
    assert len(rows) == 12
    for r in rows:
        user, answer = r.messages[0]["content"], r.messages[1]["content"]
        image = next(c["image"] for c in user if c["type"] == "image")
        assert r.answers == [answer] and answer.strip()
        assert image.size[0] <= 340 and image.size[1] <= 200  # a crop, not a page
        assert min(image.convert("L").getextrema()) < 128  # ink in it


def test_rescale_tower_multiplies_the_features_exactly():
    from molora import MoLoRAModel
    from molora.pretraining import rescale_tower

    torch.manual_seed(0)
    model = MoLoRAModel(MoLoRAConfig.preset("tiny")).eval()
    rng = random.Random(1)
    pages = [draw_document(rng).image for _ in range(3)] + [draw_chart(rng).image for _ in range(3)]
    b = ImageTransform(model.config.vision)(pages)
    px, mask = b["image_pixel_values"].flatten(0, 1), b["image_attention_mask"].flatten(0, 1).bool()
    with torch.no_grad():
        before = model.image_embed.crop_features(px, mask)
        c = rescale_tower(model, 6.0, seed=1)
        after = model.image_embed.crop_features(px, mask)
    assert c != 1.0
    torch.testing.assert_close(after, before * c, rtol=1e-4, atol=1e-5)
