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


# -- issue 10: the TCIA package, split-named folders, unused parts, macOS sidecars ---------------------


def _as_tcia(kaggle_root, dest):
    """Rebuild a Kaggle-layout C-NMC tree as TCIA's "PKG - C-NMC 2019" package (labels CSV inside the prelim folder)."""
    pkg = dest / "PKG - C-NMC 2019"
    shutil.copytree(kaggle_root / "training_data", pkg / "C-NMC_training_data")
    prelim = pkg / "C-NMC_test_prelim_phase_data"
    shutil.copytree(kaggle_root / "validation_data" / "C-NMC_test_prelim_phase_data", prelim)
    shutil.copy(kaggle_root / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv", prelim)
    final = pkg / "C-NMC_test_final_phase_data"
    final.mkdir()
    for i, img in enumerate(sorted(prelim.glob("*.bmp"))[:3]):
        shutil.copy(img, final / f"{i + 1}.bmp")
    return pkg


def _sprinkle_appledouble(root):
    """What a copy through macOS leaves: a ._ sidecar (NUL-rich, not an image) beside every file."""
    for p in sorted(root.rglob("*")):
        if p.is_file():
            (p.parent / f"._{p.name}").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X        " + b"\0" * 4000)


def test_tcia_package_is_read_like_the_kaggle_layout(synth_dir, tmp_path):
    kaggle = read_dataset(synth_dir)
    pkg = _as_tcia(synth_dir, tmp_path)
    _sprinkle_appledouble(pkg)
    for where in (tmp_path, pkg):
        ds = read_dataset(where)
        assert ds.layout == "cnmc" and ds.package == "tcia" and ds.positive_label == "all"
        assert len(ds.part("train")) == len(kaggle.part("train")) and len(ds.part("validation")) == len(kaggle.part("validation"))
        assert len(ds.part("test")) == 3 and all(s.label is None for s in ds.part("test"))
        assert not any("._" in s.path for s in ds.samples)
        assert not ds.problems, ds.problems
    rep = inspect(read_dataset(pkg))
    assert rep["images"] == len(kaggle.samples) + 3 and not rep["problems"]


def test_appledouble_sidecars_never_count_in_the_kaggle_layout(synth_dir, tmp_path):
    root = tmp_path / "C-NMC_Leukemia"
    shutil.copytree(synth_dir, root)
    _sprinkle_appledouble(root)
    ds = read_dataset(root)
    assert len(ds.samples) == len(read_dataset(synth_dir).samples) and not ds.problems


def test_split_named_folders_are_not_taken_as_classes(tmp_path):
    for split in ("train", "test"):
        for i in range(3):
            write_image(tmp_path / "d" / split / f"{i}.png", fmt="PNG", seed=i)
    with pytest.raises(DatasetError, match="look like dataset splits"):
        read_dataset(tmp_path / "d", positive="train")
    for split in ("C-NMC_test_prelim_phase_data_x", "testing_data_y"):
        write_image(tmp_path / "e" / split / "1.png", fmt="PNG")
    with pytest.raises(DatasetError, match="look like dataset splits"):
        read_dataset(tmp_path / "e")


def test_unused_parts_of_the_tree_are_reported(tmp_path, synth_dir):
    root = tmp_path / "cls"
    for cls in ("all", "hem"):
        for i in range(3):
            write_image(root / cls / f"{i}.png", fmt="PNG", seed=i)
    for i in range(5):
        write_image(root / "hem" / "more" / f"{i}.png", fmt="PNG", seed=10 + i)
    ds = read_dataset(root)
    assert len(ds.samples) == 6
    (where, what), = ds.problems
    assert where.endswith("hem/more") and "5 images" in what and "not used" in what
    pkg = _as_tcia(synth_dir, tmp_path / "t")
    write_image(pkg / "extras" / "x.bmp", fmt="BMP")
    ds = read_dataset(pkg)
    assert any(w.endswith("extras") and "1 images" in p for w, p in ds.problems)


def test_verify_maps_the_tcia_package_onto_the_release_manifest(cnmc_dir, tmp_path):
    from leukedge.train.verify import tcia_to_release, verify_release

    assert tcia_to_release("C-NMC_training_data/fold_0/all/a.bmp") == "training_data/fold_0/all/a.bmp"
    assert (tcia_to_release("C-NMC_test_prelim_phase_data/C-NMC_test_prelim_phase_data_labels.csv")
            == "validation_data/C-NMC_test_prelim_phase_data_labels.csv")
    assert tcia_to_release("C-NMC_test_final_phase_data/7.bmp") == "testing_data/C-NMC_test_final_phase_data/7.bmp"
    pkg = _as_tcia(cnmc_dir, tmp_path)
    for p in (pkg / "C-NMC_test_final_phase_data").iterdir():
        p.unlink()  # the sample has no final-phase images; copies of prelim ones would not match the manifest
    _sprinkle_appledouble(pkg)
    rep = verify_release(tmp_path, progress=False)
    assert rep.layout == "tcia" and rep.ok == 78 and not rep.unexpected
    assert [c[0] for c in rep.corrupt] == ["validation_data/C-NMC_test_prelim_phase_data_labels.csv"]


def test_a_dataset_folder_reads_jfif_and_jpe_as_jpeg(tmp_path):
    """Issue 20: Windows saves JPEGs as .jfif by default; training data read from such a folder keeps them."""
    from helpers import write_image
    from leukedge.train.datasets import read_dataset

    for cls in ("all", "hem"):
        (tmp_path / cls).mkdir()
        for i, suffix in enumerate((".jfif", ".jpe", ".jpg")):
            src = write_image(tmp_path / f"src{cls}{i}.jpg", fmt="JPEG", seed=i)
            src.rename(tmp_path / cls / f"c{i}{suffix}")
    ds = read_dataset(tmp_path, positive="all")
    assert len(ds.labelled) == 6
