import shutil

import pytest

from helpers import write_image
from leukedge.train.datasets import DatasetError, inspect, read_dataset, subject_from_name
from leukedge.train.splits import make_split


def test_subject_ids_are_case_insensitive():
    assert subject_from_name("UID_h3_12_1_hem.bmp") == subject_from_name("UID_H3_7_2_hem.bmp") == "H3"
    assert subject_from_name("UID_57_29_1_all.bmp") == "57"
    assert subject_from_name("1.bmp") is None


def test_reads_the_real_cnmc_layout(cnmc_dir):
    ds = read_dataset(cnmc_dir)
    assert ds.layout == "cnmc" and ds.labels == ["hem", "all"] and ds.positive_label == "all"
    assert len(ds.part("train")) == 74 and len(ds.part("validation")) == 4
    val = ds.part("validation")
    assert all(s.subject for s in val) and {s.label for s in val} == {0, 1}
    assert {s.fold for s in ds.part("train")} == {"fold_0", "fold_1", "fold_2"}
    assert not ds.problems


def test_official_split_keeps_subjects_apart(cnmc_dir):
    ds = read_dataset(cnmc_dir)
    sp = make_split(ds, test_fold="fold_2")
    subs = {p: {s.subject for s in ss} for p, ss in sp.parts.items()}
    assert not subs["train"] & subs["validation"] and not subs["train"] & subs["test"]
    assert {s.fold for s in sp.parts["test"]} == {"fold_2"}
    desc = sp.describe(ds)
    assert desc["rule"] == "official" and len(desc["file_list_sha256"]) == 64


def test_subjects_sharing_identical_images_are_merged_before_splitting(synth_dir, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(synth_dir, root / "C-NMC_Leukemia")
    cnmc = root / "C-NMC_Leukemia"
    src = sorted(cnmc.glob("training_data/fold_0/all/*.bmp"))[0]
    other = sorted(p for p in cnmc.glob("training_data/*/all/*.bmp") if p.name.split("_")[1] != src.name.split("_")[1])[0]
    s_a, s_b = src.name.split("_")[1], other.name.split("_")[1]
    shutil.copy(src, other.parent / f"UID_{s_b}_999_1_all_SYNTH.bmp")  # the release has such cross-subject copies
    ds = read_dataset(root)
    rep = inspect(ds)
    assert rep["duplicates_across_subjects"] and sorted(rep["duplicates_across_subjects"][0]["subjects"]) == sorted([s_a, s_b])
    for seed in range(5):
        sp = make_split(ds, "subject", seed=seed, val_fraction=0.3, test_fraction=0.2)
        where = {p: {s.subject for s in ss} for p, ss in sp.parts.items()}
        holder = [p for p, subs in where.items() if s_a in subs]
        assert len(holder) == 1 and s_b in where[holder[0]], f"seed {seed}: merged subjects straddle parts"
        assert sorted([s_a, s_b]) in sp.merged_subjects
        all_subjects = [s for subs in where.values() for s in subs]
        assert len(all_subjects) == len(set(all_subjects))


def test_random_split_is_stratified_and_seeded(tmp_path):
    for cls, n in (("ig", 30), ("neutrophil", 60)):
        for i in range(n):
            write_image(tmp_path / cls / f"{cls}_{i}.png", size=(16, 16), fmt="PNG", seed=i + (1000 if cls == "ig" else 0))
    ds = read_dataset(tmp_path)
    assert ds.labels == ["neutrophil", "ig"] and ds.positive_label == "ig"
    a = make_split(ds, seed=3, val_fraction=0.2, test_fraction=0.2)
    b = make_split(ds, seed=3, val_fraction=0.2, test_fraction=0.2)
    assert a.rule == "random" and a.file_list_sha256(ds) == b.file_list_sha256(ds)
    counts = a.describe(ds)["counts"]
    assert counts["validation"] == {"neutrophil": 12, "ig": 6} and counts["test"] == {"neutrophil": 12, "ig": 6}
    c = make_split(ds, seed=4, val_fraction=0.2, test_fraction=0.2)
    assert c.file_list_sha256(ds) != a.file_list_sha256(ds)


def test_bad_datasets_get_clear_errors(tmp_path):
    with pytest.raises(DatasetError, match="no such folder"):
        read_dataset(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="two class folders"):
        read_dataset(tmp_path / "empty")
    one = tmp_path / "one"
    write_image(one / "all" / "a.png", fmt="PNG")
    with pytest.raises(DatasetError, match="two class folders"):
        read_dataset(one)
    two = tmp_path / "two"
    write_image(two / "x" / "a.png", fmt="PNG")
    write_image(two / "y" / "b.png", fmt="PNG")
    with pytest.raises(DatasetError, match="--positive"):
        read_dataset(two)
    ds = read_dataset(two, positive="y")
    with pytest.raises(DatasetError, match="empty"):
        make_split(ds, val_fraction=0.2)


def test_labels_csv_rows_without_files_and_files_without_rows(synth_dir, tmp_path):
    root = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(synth_dir, root)
    csv_path = root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\r\n".join(lines[:-1] + ["UID_5_1_1_all.bmp,999.bmp,1"]) + "\r\n")
    ds = read_dataset(root)
    problems = " ".join(p for _, p in ds.problems)
    assert "'999.bmp' listed but no such file" in problems and "no row in the labels CSV" in problems


def test_single_class_cnmc_is_refused(synth_dir, tmp_path):
    root = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(synth_dir, root)
    for p in root.glob("training_data/*/hem"):
        shutil.rmtree(p)
    shutil.rmtree(root / "validation_data")
    with pytest.raises(DatasetError, match="only one class"):
        read_dataset(root)


def test_verify_against_the_release_manifest(cnmc_dir, tmp_path):
    from leukedge.train.verify import load_manifest, verify_release

    manifest = load_manifest()
    assert len(manifest) == 15115
    rep = verify_release(cnmc_dir, progress=False)
    assert rep.ok == 78 and len(rep.missing) == 15115 - 79 and not rep.unexpected
    # the sample's labels CSV is trimmed to its 4 images, so it differs from the release's
    assert [c[0] for c in rep.corrupt] == ["validation_data/C-NMC_test_prelim_phase_data_labels.csv"]
    copy = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(cnmc_dir, copy)
    victim = sorted(copy.glob("training_data/fold_0/all/*.bmp"))[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    (copy / "stray.txt").write_text("x")
    rep2 = verify_release(tmp_path, progress=False)
    assert any(victim.name in c[0] and "SHA-256" in c[1] for c in rep2.corrupt)
    assert rep2.unexpected == ["stray.txt"]
