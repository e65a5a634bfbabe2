"""Small-scale seed-study parent: the from-scratch 112 px run, its BatchNorm statistics re-estimated
(optimize.recover.recalibrate_batchnorm on 1,024 training images), threshold re-chosen on validation."""
import json, shutil, sys
from pathlib import Path
import numpy as np
from leukedge.edge.card import load_card_for_model, card_path_for
from leukedge.evaluation import decode_samples, load_part, evaluate, KerasScorer
from leukedge.metrics import choose_threshold
from leukedge.optimize.recover import recalibrate_batchnorm
from leukedge.tfcompat import load_keras_model
from leukedge.train.splits import read_split, SPLIT_FILE
from leukedge.train.fit import export_model

src, dst = Path("runs/seed-parent-112"), Path("runs/seed-parent-112-bn")
dst.mkdir(exist_ok=True)
card = load_card_for_model(src / "model.keras")
model = load_keras_model(src / "model.keras")
ds, split, _ = read_split(src / SPLIT_FILE, None, False, labels=card.labels)
prep = card.preprocessing
train = decode_samples(split.parts["train"], prep, what="train").in_label_order(ds.labels, card.labels)
pick = np.sort(np.random.default_rng(0).permutation(len(train.images))[:1024])
recalibrate_batchnorm(model, train.images[pick], prep)
val = load_part(split.parts["validation"], prep, "validation").in_label_order(ds.labels, card.labels)
sc = KerasScorer(model, prep, card.positive_index)
p = sc.p_positive(val.images)
thr = choose_threshold(val.labels, p, card.positive_index)
ev = evaluate(p, val, thr, card.labels, card.positive_index)
print("validation after BN re-estimation:", {k: ev.report[k] for k in ("f1_positive", "sensitivity", "specificity", "auroc")}, "thr", thr)
export_model(model, dst / "model.keras")
shutil.copy(src / SPLIT_FILE, dst / SPLIT_FILE)
card.threshold = float(thr)
card.provenance = {**card.provenance, "note": "from-scratch 112 px run, BatchNorm statistics re-estimated on 1,024 training images, threshold re-chosen on validation (seed-study harness demonstration)"}
card.bind(dst / "model.keras")
card.save(card_path_for(dst / "model.keras"))
