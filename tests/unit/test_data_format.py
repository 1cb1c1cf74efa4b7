"""Dataset format round trips, converters, the validator's error for every kind of bad shard."""

import json

import h5py
import numpy as np
import pytest

from hpctrain.data import convert, writer
from hpctrain.data import format as fmt
from hpctrain.data.format import DataError
from hpctrain.data.reader import ShardFiles
from tests.data_helpers import SmallDisk, ids_of, make_dataset


def test_round_trip_through_the_format(tmp_path):
    fields, read, meta = convert.synthetic_input("images", 100, seed=3, shape=(2, 5, 5))
    m = writer.write_dataset(tmp_path / "ds", fields, read, 100,
                             writer.WriteOptions(3, compression="lzf", chunk_samples=7, metadata=meta))
    assert [s.samples for s in m.shards] == [33, 34, 33]
    on_disk = fmt.validate(tmp_path / "ds")
    assert on_disk == m and on_disk.compression == "lzf" and on_disk.chunk_samples == 7
    with h5py.File(tmp_path / "ds" / "shard-00001.h5") as f:
        assert f["x"].chunks == (7, 2, 5, 5) and f["x"].compression == "lzf"
    back = ShardFiles(tmp_path / "ds", m).read(np.arange(100))
    expected = read(0, 100)  # shard boundaries do not change the generated samples of a range? check per shard
    parts = [read(a, b) for a, b in writer.shard_ranges(100, 3)]
    for name in ("x", "y"):
        np.testing.assert_array_equal(back[name], np.concatenate([p[name] for p in parts]))
    assert expected["x"].shape == back["x"].shape
    manifest = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert manifest["num_samples"] == 100 and manifest["fields"][0] == {"name": "x", "dtype": "float32",
                                                                        "shape": [2, 5, 5]}


def test_reads_in_any_order_with_repeats(tmp_path):
    root, m = make_dataset(tmp_path)
    ids = np.array([299, 0, 5, 5, 100, 99, 150, 1])
    assert ids_of(ShardFiles(root, m).read(ids)["x"]) == ids.tolist()


@pytest.mark.parametrize("kind", ["npy", "npz", "npz-compressed", "h5"])
def test_shard_converts_each_input_kind(tmp_path, kind):
    x = np.random.default_rng(0).standard_normal((50, 3, 2)).astype(np.float32)
    y = np.arange(50, dtype=np.int64)
    if kind == "npy":
        np.save(tmp_path / "x.npy", x)
        np.save(tmp_path / "y.npy", y)
        specs = {"x": str(tmp_path / "x.npy"), "y": str(tmp_path / "y.npy")}
    elif kind.startswith("npz"):
        (np.savez_compressed if kind.endswith("compressed") else np.savez)(tmp_path / "d.npz", a=x, b=y)
        specs = {"x": f"{tmp_path}/d.npz:a", "y": f"{tmp_path}/d.npz:b"}
    else:
        with h5py.File(tmp_path / "d.h5", "w") as f:
            f["grp/images"] = x
            f["labels"] = y
        specs = {"x": f"{tmp_path}/d.h5:/grp/images", "y": f"{tmp_path}/d.h5:/labels"}
    fields, n, read = convert.from_arrays(specs)
    m = writer.write_dataset(tmp_path / "out", fields, read, n, writer.WriteOptions(4))
    back = ShardFiles(tmp_path / "out", m).read(np.arange(50))
    np.testing.assert_array_equal(back["x"], x)
    np.testing.assert_array_equal(back["y"], y)


def test_conversion_streams_in_bounded_pieces(tmp_path, monkeypatch):
    """Memory stays bounded: the source is never asked for more than one piece at a time."""
    monkeypatch.setattr(writer, "PIECE_TARGET_BYTES", 4096)
    x = np.zeros((1000, 16), dtype=np.float32)  # 64 bytes/sample -> pieces of <= 64 samples
    np.save(tmp_path / "x.npy", x)
    fields, n, read = convert.from_arrays({"x": str(tmp_path / "x.npy")})
    sizes = []
    writer.write_dataset(tmp_path / "out", fields, lambda a, b: (sizes.append(b - a), read(a, b))[1], n,
                         writer.WriteOptions(2, chunk_samples=16))
    assert sum(sizes) == 1000 and max(sizes) <= 64


@pytest.mark.parametrize("specs, message", [
    ({"x": "missing.npy"}, "missing.npy: input file not found"),
    ({"x": "{tmp}/d.npz"}, "name the array inside the .npz"),
    ({"x": "{tmp}/d.npz:nope"}, "no array 'nope' in the archive (has: a, b)"),
    ({"x": "{tmp}/d.npz:a", "y": "{tmp}/short.npy"}, "input arrays differ in sample count"),
    ({"x": "{tmp}/d.txt"}, "unsupported input type '.txt'"),
])
def test_converter_input_errors(tmp_path, specs, message):
    np.savez(tmp_path / "d.npz", a=np.zeros((5, 2)), b=np.zeros(5))
    np.save(tmp_path / "short.npy", np.zeros(4))
    (tmp_path / "d.txt").write_text("1 2 3")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert.from_arrays({k: v.format(tmp=tmp_path) for k, v in specs.items()})


def _corrupt(root, kind):
    shard = root / "shard-00001.h5"
    if kind == "missing":
        shard.unlink()
    elif kind == "truncated":
        shard.write_bytes(shard.read_bytes()[:-100])
    elif kind == "tampered":  # same size, one byte of sample data changed
        data = bytearray(shard.read_bytes())
        data[-50] ^= 0xFF
        shard.write_bytes(bytes(data))
    elif kind == "not-hdf5":
        shard.write_bytes(b"x" * shard.stat().st_size)
    elif kind == "dtype":  # a valid HDF5 shard of the right size class, but float64 samples
        with h5py.File(shard, "w") as f:
            f["x"] = np.zeros((100, 4), dtype=np.float64)
            f["y"] = np.zeros(100, dtype=np.int64)
        m = json.loads((root / "manifest.json").read_text())
        m["shards"][1].update(bytes=shard.stat().st_size, sha256=fmt.sha256_file(shard))
        (root / "manifest.json").write_text(json.dumps(m))
    elif kind == "count":
        m = json.loads((root / "manifest.json").read_text())
        m["shards"][1]["samples"] += 1
        m["num_samples"] += 1
        (root / "manifest.json").write_text(json.dumps(m))
    return shard


@pytest.mark.parametrize("kind, message", [
    ("missing", "shard-00001.h5: shard listed in the manifest is missing"),
    ("truncated", "shard-00001.h5: .* bytes but the manifest says .* \\(truncated or replaced\\)"),
    ("tampered", "shard-00001.h5: SHA-256 does not match the manifest"),
    ("not-hdf5", "shard-00001.h5: cannot be read as HDF5"),
    ("dtype", "shard-00001.h5: field 'x' is float64\\[4\\], the manifest says float32\\[4\\]"),
    ("count", "shard-00001.h5: field 'x' has 100 samples, the manifest says 101"),
])
def test_validate_names_the_bad_shard(tmp_path, kind, message):
    root, _ = make_dataset(tmp_path)
    _corrupt(root, kind)
    with pytest.raises(DataError, match=message):
        fmt.validate(root)


def test_validate_manifest_errors(tmp_path):
    with pytest.raises(DataError, match="dataset directory not found"):
        fmt.validate(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="manifest.json: manifest not found"):
        fmt.validate(tmp_path / "empty")
    root, _ = make_dataset(tmp_path)
    (root / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="manifest.json: manifest is not valid JSON"):
        fmt.validate(root)
    m = {"format": fmt.FORMAT_NAME, "version": 1, "fields": [{"name": "x", "dtype": "float32", "shape": []},
                                                              {"name": "y", "dtype": "int64", "shape": []}],
         "shards": [], "chunk_samples": 1}
    (root / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(DataError, match="the dataset is empty"):
        fmt.validate(root)
    (root / "manifest.json").write_text(json.dumps({**m, "shards": [{"file": "a.h5"}]}))
    with pytest.raises(DataError, match="malformed manifest \\(KeyError"):
        fmt.validate(root)


def test_failed_write_leaves_nothing_behind(tmp_path):
    fields, read, _ = convert.synthetic_input("vectors", 100, seed=1)

    def failing(a, b):
        if a >= 50:
            raise DataError("input broke at sample 50")
        return read(a, b)

    with pytest.raises(DataError, match="input broke at sample 50"):
        writer.write_dataset(tmp_path / "ds", fields, failing, 100, writer.WriteOptions(4))
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    root, m = make_dataset(tmp_path, samples=40, shards=1)
    with pytest.raises(DataError, match="already exists; pass --overwrite"):
        make_dataset(tmp_path, samples=40, shards=1)
    fields, read, _ = convert.synthetic_input("vectors", 60, seed=2, shape=(4,))
    writer.write_dataset(root, fields, read, 60, writer.WriteOptions(2, overwrite=True))
    assert fmt.validate(root).num_samples == 60 and sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_disk_full_fails_cleanly_and_keeps_nothing(tmp_path):
    disk = SmallDisk(tmp_path / "small")
    if not disk.mounted:
        pytest.skip(f"cannot mount a tmpfs here ({disk.why}); CI runs as root and can")
    try:
        fields, read, _ = convert.synthetic_input("vectors", 20_000, seed=1, shape=(64,))  # ~5 MiB
        with pytest.raises(DataError, match="writing failed .*is the disk full"):
            writer.write_dataset(disk.path / "ds", fields, read, 20_000, writer.WriteOptions(2))
        assert list(disk.path.iterdir()) == []
    finally:
        disk.close()


def test_inspect_summarises(tmp_path):
    root, _ = make_dataset(tmp_path)
    text = fmt.describe(root)
    assert "300 samples in 3 shard(s)" in text and "field x (inputs): float32 [4]" in text
