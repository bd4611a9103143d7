"""pneumolens.cache: decode once, key by content and preprocessing, survive bad files and damaged entries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pneumolens import cache
from pneumolens.cache import load_images, preprocess_tag
from pneumolens.io import load_image, resize_square


def write_images(folder: Path, n: int, seed: int = 0, shape: tuple[int, int] = (30, 40)) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"img{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def entries(cache_dir: Path, size: int) -> list[Path]:
    return sorted((cache_dir / preprocess_tag(size)).rglob("*.npy"))


def no_decoding(*args, **kwargs):
    raise AssertionError("decoded although the cache should have answered")


def test_cache_hit_returns_the_same_arrays(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "img", 3)
    first = load_images(paths, 16, cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(first.images, np.stack([load_image(p, 16) for p in paths]))
    assert len(entries(tmp_path / "c", 16)) == 3
    monkeypatch.setattr(cache, "load_image", no_decoding)
    second = load_images(paths, 16, cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(second.images, first.images)
    assert second.kept == [0, 1, 2] and second.bad == []


def test_renamed_file_hits_edited_file_misses(tmp_path, monkeypatch):
    path = write_images(tmp_path / "img", 1)[0]
    before = load_images([path], 16, cache_dir=tmp_path / "c", progress=False).images[0]
    renamed = path.rename(path.with_name("renamed.png"))
    monkeypatch.setattr(cache, "load_image", no_decoding)
    hit = load_images([renamed], 16, cache_dir=tmp_path / "c", progress=False).images[0]
    np.testing.assert_array_equal(hit, before)
    monkeypatch.undo()
    edited = np.random.default_rng(1).integers(0, 256, (30, 40), dtype=np.uint8)
    Image.fromarray(edited).save(renamed)  # new bytes
    after = load_images([renamed], 16, cache_dir=tmp_path / "c", progress=False).images[0]
    np.testing.assert_array_equal(after, resize_square(edited, 16))
    assert not np.array_equal(after, before)
    assert len(entries(tmp_path / "c", 16)) == 2


def test_each_size_gets_its_own_entry(tmp_path):
    path = write_images(tmp_path / "img", 1)[0]
    a = load_images([path], 16, cache_dir=tmp_path / "c", progress=False).images
    b = load_images([path], 24, cache_dir=tmp_path / "c", progress=False).images
    assert a.shape == (1, 16, 16) and b.shape == (1, 24, 24)
    assert len(entries(tmp_path / "c", 16)) == 1 and len(entries(tmp_path / "c", 24)) == 1
    assert preprocess_tag(16) != preprocess_tag(24)


@pytest.mark.parametrize("damage", [b"", b"not numpy at all", "wrong_shape"])
def test_damaged_entry_is_rebuilt(tmp_path, damage):
    path = write_images(tmp_path / "img", 1)[0]
    good = load_images([path], 16, cache_dir=tmp_path / "c", progress=False).images
    (entry,) = entries(tmp_path / "c", 16)
    if damage == "wrong_shape":
        np.save(entry, np.zeros((3, 3), dtype=np.uint8))
    else:
        entry.write_bytes(damage)
    again = load_images([path], 16, cache_dir=tmp_path / "c", progress=False)
    np.testing.assert_array_equal(again.images, good)
    np.testing.assert_array_equal(np.load(entry), good[0])  # rewritten


def test_unwritable_cache_only_costs_speed(tmp_path):
    paths = write_images(tmp_path / "img", 2)
    blocker = tmp_path / "c"
    blocker.write_text("a file where the cache folder should be")
    res = load_images(paths, 16, cache_dir=blocker, progress=False)
    assert res.kept == [0, 1] and res.bad == []


def test_bad_files_reported_good_files_go_on(tmp_path):
    good = write_images(tmp_path / "img", 3)
    empty = tmp_path / "empty.png"
    empty.write_bytes(b"")
    text = tmp_path / "text.jpeg"
    text.write_text("hello")
    missing = tmp_path / "missing.png"
    paths = [good[0], empty, good[1], text, missing, good[2]]
    for use_cache in (True, False):
        res = load_images(paths, 16, cache_dir=tmp_path / "c", use_cache=use_cache, progress=False)
        assert res.kept == [0, 2, 5] and res.images.shape == (3, 16, 16)
        np.testing.assert_array_equal(res.images[1], load_image(good[1], 16))
        assert [b[0] for b in res.bad] == [str(empty), str(text), str(missing)]
        for file, reason in res.bad:
            assert reason.startswith(file) and "\n" not in reason
        assert "empty" in res.bad[0][1] and "not a recognised" in res.bad[1][1] and "does not exist" in res.bad[2][1]


def test_all_bad_gives_empty_array(tmp_path):
    bad = tmp_path / "x.png"
    bad.write_text("nope")
    res = load_images([bad], 16, use_cache=False, progress=False)
    assert res.images.shape == (0, 16, 16) and res.images.dtype == np.uint8 and res.kept == []


def test_no_cache_writes_nothing(tmp_path):
    paths = write_images(tmp_path / "img", 2)
    load_images(paths, 16, cache_dir=tmp_path / "c", use_cache=False, progress=False)
    assert not (tmp_path / "c").exists()


def test_pool_and_serial_paths_agree(tmp_path, monkeypatch):
    paths = write_images(tmp_path / "img", 12)
    paths.insert(5, tmp_path / "missing.png")
    monkeypatch.setattr(cache, "POOL_MIN_FILES", 4)
    calls = []
    real_pool = cache.ProcessPoolExecutor

    def spy_pool(*args, **kwargs):
        calls.append(kwargs.get("max_workers"))
        return real_pool(*args, **kwargs)

    monkeypatch.setattr(cache, "ProcessPoolExecutor", spy_pool)
    pooled = load_images(paths, 16, use_cache=False, workers=2, progress=False)
    assert calls == [2]  # the pool really ran
    serial = load_images(paths, 16, use_cache=False, workers=1, progress=False)
    assert calls == [2]
    np.testing.assert_array_equal(pooled.images, serial.images)
    assert pooled.kept == serial.kept and pooled.bad == serial.bad and len(pooled.bad) == 1


def test_default_cache_dir_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("PNEUMOLENS_CACHE", str(tmp_path / "somewhere"))
    assert cache.default_cache_dir() == tmp_path / "somewhere"
    monkeypatch.delenv("PNEUMOLENS_CACHE")
    assert cache.default_cache_dir() == Path.home() / ".cache" / "pneumolens"
