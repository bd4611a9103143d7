"""pneumolens.data: file-name parsing, the Kaggle layout, the patient-level split, the data root."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from pneumolens import data
from pneumolens.commands import _common
from pneumolens.data import Record, find_images, find_split, parse_name, patient_split, resolve_data_root
from pneumolens.errors import DatasetError

# ------------------------------------------------------------------ parse_name (patterns of shared/data/README.md)


@pytest.mark.parametrize(
    "name,label,patient,subtype",
    [
        ("person12_bacteria_45.jpeg", 1, "person12", "bacteria"),
        ("person1946_bacteria_4875.jpeg", 1, "person1946", "bacteria"),
        ("person3_virus_16.jpeg", 1, "person3", "virus"),
        ("person447_virus_921_1.jpeg", 1, "person447", "virus"),  # a real name with an extra suffix
        ("IM-0115-0001.jpeg", 0, "IM-0115", "normal"),
        ("IM-0629-0001-0002.jpeg", 0, "IM-0629", "normal"),
        ("NORMAL2-IM-1427-0001.jpeg", 0, "NORMAL2-IM-1427", "normal"),
        ("NORMAL2-IM-0381-0001-0003.jpeg", 0, "NORMAL2-IM-0381", "normal"),
        ("Person12_Bacteria_45.JPEG", 1, "person12", "bacteria"),  # case does not matter
        ("im-0115-0001.png", 0, "IM-0115", "normal"),
    ],
)
def test_parse_name_known_patterns(name, label, patient, subtype):
    assert parse_name(name, label) == (patient, subtype)


def test_normal_series_are_different_patients():
    assert parse_name("IM-0115-0001.jpeg", 0)[0] != parse_name("NORMAL2-IM-0115-0001.jpeg", 0)[0]


@pytest.mark.parametrize(
    "name,label,expected",
    [
        ("scan_001.png", 1, ("scan_001", "pneumonia")),
        ("scan_001.png", 0, ("scan_001", "normal")),
        ("person_bacteria.jpeg", 1, ("person_bacteria", "pneumonia")),  # no patient number
        ("IM-abc-0001.jpeg", 0, ("IM-abc-0001", "normal")),
        ("patient7.dcm", 1, ("patient7", "pneumonia")),
    ],
)
def test_parse_name_unknown_names_are_their_own_patient(name, label, expected):
    assert parse_name(name, label) == expected


# ------------------------------------------------------------------ find_split


def make_layout(root: Path, files: dict[str, list[str]]) -> Path:
    """``files`` maps 'train/NORMAL' -> names; writes tiny placeholder files (find_split does not decode)."""
    for folder, names in files.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for name in names:
            (root / folder / name).write_bytes(b"x")
    return root


def test_find_split_records(synthetic_dataset):
    records = find_split(synthetic_dataset, "train")
    assert len(records) == 48
    assert Counter(r.label for r in records) == {0: 24, 1: 24}
    assert all(r.split == "train" for r in records)
    for r in records:
        assert r.path.is_file() and r.path.parent.name == data.CLASS_NAMES[r.label]
        assert r.subtype in (("normal",) if r.label == 0 else ("bacteria", "virus"))
    assert len({r.patient_id for r in records}) == 24  # two films per patient
    assert records == find_split(synthetic_dataset, "train")  # sorted, stable


def test_find_split_missing_split(tmp_path):
    make_layout(tmp_path, {"train/NORMAL": ["IM-0001-0001.jpeg"], "train/PNEUMONIA": ["person1_virus_1.jpeg"]})
    with pytest.raises(DatasetError) as e:
        find_split(tmp_path, "test")
    msg = str(e.value)
    assert "test" in msg and "missing" in msg and str(tmp_path) in msg and "\n" not in msg


def test_find_split_missing_class_folder(tmp_path):
    make_layout(tmp_path, {"train/NORMAL": ["IM-0001-0001.jpeg"]})
    with pytest.raises(DatasetError, match=r"PNEUMONIA.*missing"):
        find_split(tmp_path, "train")


def test_find_split_empty_class_folder(tmp_path):
    make_layout(tmp_path, {"train/NORMAL": ["IM-0001-0001.jpeg"], "train/PNEUMONIA": [".DS_Store"]})
    with pytest.raises(DatasetError, match=r"PNEUMONIA.*empty"):
        find_split(tmp_path, "train")  # a folder holding only hidden files is empty


def test_find_split_ignores_hidden_files_lists_non_images(tmp_path):
    make_layout(
        tmp_path,
        {
            "train/NORMAL": ["IM-0001-0001.jpeg", ".DS_Store", "._IM-0001-0001.jpeg", "notes.txt"],
            "train/PNEUMONIA": ["person1_virus_1.jpeg"],
        },
    )
    (tmp_path / "train/NORMAL/subfolder").mkdir()
    names = [r.path.name for r in find_split(tmp_path, "train")]
    assert names == ["IM-0001-0001.jpeg", "notes.txt", "person1_virus_1.jpeg"]


def test_find_split_non_images_are_reported_by_decoding(tmp_path):
    from pneumolens.cache import load_images

    make_layout(tmp_path, {"train/NORMAL": ["notes.txt"], "train/PNEUMONIA": ["person1_virus_1.jpeg"]})
    records = find_split(tmp_path, "train")
    res = load_images([r.path for r in records], 16, use_cache=False, progress=False)
    assert res.kept == [] and [Path(p).name for p, _ in res.bad] == ["notes.txt", "person1_virus_1.jpeg"]


# ------------------------------------------------------------------ patient_split


def fake_records(n_patients: tuple[int, int] = (60, 140), films: int = 3) -> list[Record]:
    """Patients with 1..films films each, NORMAL then PNEUMONIA."""
    records = []
    for label, n in enumerate(n_patients):
        for p in range(n):
            pid = f"IM-{p:04d}" if label == 0 else f"person{p}"
            for k in range(1 + p % films):
                subtype = "normal" if label == 0 else "virus"
                records.append(Record(Path(f"{pid}-{k}.jpeg"), label, pid, subtype, "train"))
    return records


def test_patient_split_no_patient_on_both_sides():
    train, val = patient_split(fake_records(), 0.2, seed=3)
    assert {r.patient_id for r in train}.isdisjoint({r.patient_id for r in val})
    assert len(train) + len(val) == len(fake_records())
    assert set(map(id, train)).isdisjoint(map(id, val))


def test_patient_split_deterministic_and_seed_dependent():
    records = fake_records()
    a, b, c = patient_split(records, 0.1, 0), patient_split(records, 0.1, 0), patient_split(records, 0.1, 1)
    assert a == b
    assert {r.path for r in a[1]} != {r.path for r in c[1]}


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_patient_split_stratified_close_to_fraction(fraction):
    records = fake_records()
    _, val = patient_split(records, fraction, seed=7)
    for label in (0, 1):
        n = sum(r.label == label for r in records)
        n_val = sum(r.label == label for r in val)
        assert fraction * n <= n_val <= fraction * n + 3  # overshoot by at most one patient (<= 3 films)


def test_patient_split_patient_with_both_labels_stays_together():
    records = fake_records((10, 10), films=1)
    shared = Record(Path("odd.jpeg"), 1, "IM-0000", "pneumonia", "train")  # IM-0000 also has a NORMAL film
    records.append(shared)
    for seed in range(20):
        train, val = patient_split(records, 0.3, seed)
        sides = {("val" if r in val else "train") for r in records if r.patient_id == "IM-0000"}
        assert len(sides) == 1


def test_patient_split_keeps_a_patient_of_each_class_in_train():
    records = fake_records((1, 2), films=1)
    train, val = patient_split(records, 0.9, seed=0)
    assert {r.label for r in train} == {0, 1}


@pytest.mark.parametrize("fraction", [0, 1, -0.1, 1.5])
def test_patient_split_invalid_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        patient_split(fake_records(), fraction)


# ------------------------------------------------------------------ resolve_data_root


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """Candidate roots, a working folder ``work/repo`` holding ``chest_xray``, and the workspace's
    ``work/shared/data/chest_xray`` beside it; the CLI's checkout anchor points at ``checkout/repo``."""
    made = {k: tmp_path / k for k in ("flag", "env", "first", "second")}
    for p in made.values():
        p.mkdir()
    cwd = tmp_path / "work" / "repo"
    cwd.mkdir(parents=True)
    (cwd / "chest_xray").mkdir()
    made["workspace"] = tmp_path / "work" / "shared" / "data" / "chest_xray"
    made["workspace"].mkdir(parents=True)
    made["checkout_data"] = tmp_path / "checkout" / "shared" / "data" / "chest_xray"
    made["checkout_data"].mkdir(parents=True)
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(_common, "CHECKOUT", tmp_path / "checkout" / "repo")
    monkeypatch.setenv("PNEUMOLENS_DATA", str(made["env"]))
    return made


def test_resolve_order(roots, monkeypatch):
    assert resolve_data_root(roots["flag"]) == roots["flag"]
    assert resolve_data_root(None) == roots["env"]
    monkeypatch.delenv("PNEUMOLENS_DATA")
    assert resolve_data_root(None, [roots["first"], roots["second"]]) == roots["first"]
    roots["first"].rmdir()
    assert resolve_data_root(None, [roots["first"], roots["second"]]) == roots["second"]
    assert resolve_data_root(None) == Path("chest_xray")  # the library's only default: ./chest_xray


def test_library_never_looks_in_the_workspace(roots, monkeypatch):
    """../shared/data/chest_xray exists beside the working folder, but only the CLI knows that place."""
    monkeypatch.delenv("PNEUMOLENS_DATA")
    (Path.cwd() / "chest_xray").rmdir()
    with pytest.raises(DatasetError, match=r"looked for \./chest_xray\)"):
        resolve_data_root(None)
    assert not hasattr(data, "DEFAULT_SHARED_DATA")


def test_cli_default_order(roots, monkeypatch, tmp_path):
    """--data, $PNEUMOLENS_DATA, the workspace beside the checkout, beside the working folder, ./chest_xray."""
    assert _common.data_root(str(roots["flag"])) == roots["flag"]
    assert _common.data_root(None) == roots["env"]
    monkeypatch.delenv("PNEUMOLENS_DATA")
    assert _common.data_root(None) == roots["checkout_data"]
    roots["checkout_data"].rmdir()
    assert _common.data_root(None) == roots["workspace"]  # normalised: no ".." left in the path
    roots["workspace"].rmdir()
    assert _common.data_root(None) == Path("chest_xray")


def test_cli_help_and_fallbacks_name_the_workspace_once(roots):
    assert _common.WORKSPACE_DATA == Path("../shared/data/chest_xray")
    assert "$PNEUMOLENS_DATA, else ../shared/data/chest_xray, else ./chest_xray" in _common.DATA_HELP
    fallbacks = _common.data_fallbacks()
    assert fallbacks == (roots["checkout_data"], roots["workspace"], Path("chest_xray"))


def test_resolve_nothing_found(roots, monkeypatch):
    monkeypatch.delenv("PNEUMOLENS_DATA")
    (Path.cwd() / "chest_xray").rmdir()
    with pytest.raises(DatasetError) as e:
        resolve_data_root(None, [roots["flag"] / "missing", "nowhere"])
    msg = str(e.value)
    assert f"looked for {(roots['flag'] / 'missing').as_posix()}, ./nowhere)" in msg
    assert "paultimothymooney/chest-xray-pneumonia" in msg and "\n" not in msg


@pytest.mark.parametrize("source", ["flag", "env"])
def test_resolve_missing_explicit_folder_is_an_error(roots, monkeypatch, tmp_path, source):
    missing = tmp_path / "nowhere"
    if source == "env":
        monkeypatch.setenv("PNEUMOLENS_DATA", str(missing))
    for resolve in (resolve_data_root, _common.data_root):
        with pytest.raises(DatasetError) as e:
            resolve(missing if source == "flag" else None)  # never falls back to another root
        assert str(missing) in str(e.value) and "paultimothymooney/chest-xray-pneumonia" in str(e.value)


# ------------------------------------------------------------------ find_images (predict's inputs)


def test_find_images_walks_folders_and_keeps_named_files(tmp_path):
    make_layout(tmp_path, {"a": ["x.jpeg", "y.PNG", "notes.txt", ".hidden.png"], "a/b": ["z.dcm", "w.dicom", "v.JPG"]})
    make_layout(tmp_path, {"a/.git": ["q.png"]})
    explicit = tmp_path / "elsewhere.txt"
    explicit.write_text("not an image")
    files, found = find_images([tmp_path / "a", explicit, tmp_path / "a" / "x.jpeg", tmp_path / "missing.png"])
    rel = [str(p.relative_to(tmp_path)) for p in files]
    assert rel == ["a/b/v.JPG", "a/b/w.dicom", "a/b/z.dcm", "a/x.jpeg", "a/y.PNG", "elsewhere.txt", "missing.png"]
    assert found == {tmp_path / "a": 5}


# ------------------------------------------------------------------ the real data


@pytest.mark.integration
def test_real_train_split(real_data_root):
    records = find_split(real_data_root, "train")
    assert len(records) == 5216
    assert Counter(r.label for r in records) == {0: 1341, 1: 3875}
    assert Counter(r.subtype for r in records) == {"normal": 1341, "bacteria": 2530, "virus": 1345}
    train, val = patient_split(records)
    assert len(train) + len(val) == 5216
    assert {r.patient_id for r in train}.isdisjoint({r.patient_id for r in val})
    for label in (0, 1):
        n = sum(r.label == label for r in records)
        assert 0.1 * n <= sum(r.label == label for r in val) <= 0.1 * n + 15


@pytest.mark.integration
def test_real_val_split(real_data_root):
    records = find_split(real_data_root, "val")
    assert Counter(r.label for r in records) == {0: 8, 1: 8}
    assert {r.subtype for r in records} == {"normal", "bacteria"}
