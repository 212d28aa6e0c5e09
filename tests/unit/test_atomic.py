"""Atomic writes keep the mode (and owner/group) of the file they replace; a new file follows the umask."""

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from perftune.util.atomic import atomic_path, current_umask, write_text


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_replacing_a_644_file_keeps_644(tmp_path: Path, umask: None) -> None:
    f = tmp_path / "registry.yaml"
    f.write_text("old\n")
    f.chmod(0o644)
    write_text(f, "new\n")
    assert f.read_text() == "new\n"
    assert _mode(f) == 0o644  # was 0o600: mkstemp's mode leaked into the result


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664, 0o755])
def test_replacing_keeps_any_mode(tmp_path: Path, mode: int, umask: None) -> None:
    os.umask(0o077)  # the umask does not apply to a file that already exists
    f = tmp_path / "f"
    f.write_text("old")
    f.chmod(mode)
    write_text(f, "new")
    assert _mode(f) == mode


@pytest.mark.parametrize(("mask", "want"), [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_follows_the_umask(tmp_path: Path, mask: int, want: int, umask: None) -> None:
    os.umask(mask)
    assert current_umask() == mask
    f = tmp_path / "sub" / "new.txt"
    write_text(f, "x")
    assert _mode(f) == want
    assert os.umask(mask) == mask  # reading it did not change it


def test_group_and_owner_kept(tmp_path: Path, umask: None) -> None:
    f = tmp_path / "f"
    f.write_text("old")
    before = f.stat()
    write_text(f, "new")
    after = f.stat()
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)


def test_failed_block_leaves_the_file_and_no_temp(tmp_path: Path, umask: None) -> None:
    f = tmp_path / "f"
    f.write_text("old")
    f.chmod(0o640)
    with pytest.raises(RuntimeError), atomic_path(f) as tmp:
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert f.read_text() == "old" and _mode(f) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


def test_temp_file_is_private_while_written(tmp_path: Path, umask: None) -> None:
    f = tmp_path / "f"
    f.write_text("old")
    f.chmod(0o644)
    with atomic_path(f) as tmp:
        assert _mode(tmp) == 0o600  # nobody else reads a half-written file
        tmp.write_text("new")
    assert _mode(f) == 0o644


def test_model_synth_files_follow_the_umask(
    tmp_path: Path, umask: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from perftune.models import synth

    monkeypatch.setattr(synth, "CORPUS_BYTES", 200_000)  # a small tokenizer is enough for modes
    os.umask(0o022)
    out = tmp_path / "model"
    cfg = {"model_type": "llama", "vocab_size": 1024, "bos_token_id": 1, "eos_token_id": 2}
    synth.synth(cfg, out, train_vocab=600)
    assert _mode(out) == 0o755  # was 0o700 (mkdtemp), its files 0o600 (mkstemp)
    files = sorted(p.name for p in out.iterdir())
    assert files == ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"]
    assert {p.name: _mode(p) for p in out.iterdir()} == dict.fromkeys(files, 0o644)
