"""Presets: TOML round trip in a private config dir, refusals, no silent overwrite, shipped
presets up to date with the model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from wanctl.core.links import Collective
from wanctl.core.settings import Settings
from wanctl.core.workload import Workload
from wanctl.errors import UsageError
from wanctl.probe.base import fingerprint
from wanctl.tune import presets
from wanctl.tune.predict import Card
from wanctl.tune.rig_links import save_links
from wanctl.tune.search import plan

USER = Workload(1280, 704, 121, 2)


@pytest.fixture(autouse=True)
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(presets.CONFIG_DIR_ENV, str(tmp_path))
    return tmp_path


def user_rig() -> tuple[str, presets.Rig, presets.Entry]:
    inventory, rig = presets.rig_of("2x RTX 5090 32GB")
    entry = presets.entry_of(plan(USER, rig.card), created="2026-11-24T00:00:00+00:00")
    return fingerprint(inventory), rig, entry


def test_save_load_list_remove_round_trip(config_dir: Path) -> None:
    key, rig, entry = user_rig()
    path = presets.save(key, rig, entry)
    assert path == config_dir / "presets" / "2x-rtx-5090-32gb-pcie.toml"
    loaded = presets.load(key)
    assert loaded is not None and loaded.origin == "user"
    assert loaded.rig == rig and loaded.find(USER) == entry
    listed = [item for item in presets.listing() if item.fingerprint == key]
    assert [item.origin for item in listed] == ["user", "shipped"]
    assert presets.remove(key) == path and not path.exists()
    shipped = presets.load(key)
    assert shipped is not None and shipped.origin == "shipped"


def test_a_second_workload_is_added_to_the_same_file() -> None:
    key, rig, entry = user_rig()
    presets.save(key, rig, entry)
    other = presets.entry_of(plan(dataclasses.replace(USER, frames=81), rig.card), created="x")
    presets.save(key, rig, other)
    loaded = presets.load(key)
    assert loaded is not None and len(loaded.entries) == 2


def test_other_settings_are_never_overwritten_silently() -> None:
    key, rig, entry = user_rig()
    presets.save(key, rig, entry)
    changed = dataclasses.replace(entry, settings=Settings(decode_ranks=2, offload=True))
    with pytest.raises(UsageError) as refused:
        presets.save(key, rig, changed)
    assert refused.value.exit_code == 2 and "--force" in refused.value.fix
    presets.save(key, rig, dataclasses.replace(entry, created="later"))  # same settings: fine
    presets.save(key, rig, changed, force=True)
    loaded = presets.load(key)
    assert loaded is not None and loaded.find(USER).settings.offload  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("this is [not toml", "not valid TOML"),
        ('kind = "something-else"\n', "not a wanctl preset"),
        ('kind = "wanctl-preset"\nschema = 99\n', "schema 99"),
        ('kind = "wanctl-preset"\nschema = 1\nfingerprint = "2x-rtx-5090-32gb-pcie"\n', "damaged"),
    ],
)
def test_corrupt_files_are_refused_clearly(config_dir: Path, text: str, message: str) -> None:
    folder = config_dir / "presets"
    folder.mkdir()
    (folder / "2x-rtx-5090-32gb-pcie.toml").write_text(text)
    with pytest.raises(UsageError) as refused:
        presets.load("2x-rtx-5090-32gb-pcie")
    assert refused.value.exit_code == 2 and message in refused.value.message
    key, rig, entry = user_rig()
    with pytest.raises(UsageError, match="will not overwrite"):
        presets.save(key, rig, entry)
    presets.save(key, rig, entry, force=True)
    assert presets.load(key) is not None


def test_a_foreign_preset_is_refused(config_dir: Path) -> None:
    key, rig, entry = user_rig()
    path = presets.save(key, rig, entry)
    foreign = config_dir / "presets" / "1x-h100-80gb-single.toml"
    path.rename(foreign)
    with pytest.raises(UsageError) as refused:
        presets.load("1x-h100-80gb-single")
    assert "is for the rig '2x-rtx-5090-32gb-pcie'" in refused.value.message
    listed = {item.fingerprint: item for item in presets.listing() if item.origin == "user"}
    assert listed["1x-h100-80gb-single"].error is not None


def test_settings_of_the_wrong_type_are_damage(config_dir: Path) -> None:
    key, rig, entry = user_rig()
    path = presets.save(key, rig, entry)
    text = path.read_text()
    assert "\nchunk_t = 1\n" in text  # the settings' line, not max_chunk_t's
    path.write_text(text.replace("\nchunk_t = 1\n", '\nchunk_t = "one"\n'))
    with pytest.raises(UsageError, match="damaged"):
        presets.load(key)


def test_shipped_presets_can_not_be_removed() -> None:
    with pytest.raises(UsageError, match="shipped"):
        presets.remove("8x-h100-80gb-nvlink")
    with pytest.raises(UsageError, match="no preset"):
        presets.remove("3x-nothing")


def test_shipped_presets_are_the_models_current_output(tmp_path: Path) -> None:
    """`python -m wanctl.tune.presets --regenerate-shipped` must leave them unchanged."""
    written = presets.regenerate_shipped(tmp_path / "fresh")
    shipped = presets.shipped_dir()
    assert sorted(p.name for p in written) == sorted(p.name for p in shipped.glob("*.toml"))
    for path in written:
        assert path.read_text() == (shipped / path.name).read_text(), path.name
    for listed in (item for item in presets.listing() if item.origin == "shipped"):
        assert listed.preset is not None
        assert all(entry.source == "model" for entry in listed.preset.entries)


def test_resolve_prefers_a_saved_preset_over_the_model() -> None:
    inventory, rig = presets.rig_of("2x RTX 5090 32GB")
    from_shipped = presets.resolve(inventory, USER, nccl_env={})
    assert from_shipped.source.startswith("shipped preset")
    assert from_shipped.settings.decode_ranks == 2
    key, _, entry = user_rig()
    pinned = dataclasses.replace(
        entry, settings=Settings(decode_ranks=2, offload=True), env={"WAN_VAE_DECODE_CHUNK_T": "1"}
    )
    presets.save(key, rig, pinned)
    resolved = presets.resolve(inventory, USER, nccl_env={})
    assert resolved.source.startswith("user preset") and resolved.settings.offload
    assert resolved.env == {"WAN_VAE_DECODE_CHUNK_T": "1"}
    model_only = presets.resolve(inventory, dataclasses.replace(USER, frames=81), nccl_env={})
    assert model_only.source == "model" and model_only.fits


def test_a_rig_described_with_another_memory_size() -> None:
    _, rig = presets.rig_of("1x RTX 4090 48GB")  # the 48 GB 4090s of Wan2.2#58
    assert rig.memory_mib == 48 * 1024 and rig.card == Card(rig.gpu_name, 48 * 1024, (8, 9))


def test_resolve_keeps_doctors_nccl_settings_over_the_presets_env(config_dir: Path) -> None:
    """A preset holds no (or stale) NCCL findings; doctor's current ones win, the file stays."""
    inventory, rig = presets.rig_of("2x RTX 5090 32GB")
    key, _, entry = user_rig()
    saved_env = {"WAN_VAE_DECODE_CHUNK_T": "1", "NCCL_P2P_DISABLE": "0", "NCCL_DEBUG": "WARN"}
    path = presets.save(key, rig, dataclasses.replace(entry, env=saved_env))
    before = path.read_text()
    resolved = presets.resolve(inventory, USER, nccl_env={"NCCL_P2P_DISABLE": "1"})
    assert resolved.source.startswith("user preset")
    assert resolved.env == {**saved_env, "NCCL_P2P_DISABLE": "1"}
    assert path.read_text() == before
    presets.remove(key)
    shipped = presets.resolve(inventory, USER, nccl_env={"NCCL_P2P_DISABLE": "1"})
    assert shipped.source.startswith("shipped preset") and shipped.env["NCCL_P2P_DISABLE"] == "1"


def test_the_readme_shows_the_shipped_preset_as_it_is() -> None:
    """The README's preset example is the head of the shipped 2x RTX 5090 file, verbatim."""
    root = Path(__file__).resolve().parent.parent
    readme = (root / "README.md").read_text()
    start = readme.index("```toml\n# Shipped with wanctl") + len("```toml\n")
    example = readme[start : readme.index("```", start)]
    shipped = (root / "wanctl" / "presets_data" / "2x-rtx-5090-32gb-pcie.toml").read_text()
    assert "[[entries]]" in example and shipped.startswith(example)


LINKS = (
    Collective("all_to_all", 2, 83804160, 0.004, "doctor --full on 2x RTX 5090, 2026-12-02"),
    Collective("cfg_exchange", 2, 10475520, 0.0011, "doctor --full on 2x RTX 5090, 2026-12-02"),
)


def test_links_round_trip_through_toml() -> None:
    key, rig, entry = user_rig()
    preset = presets.Preset(key, dataclasses.replace(rig, links=LINKS), "0.1.0", (entry,))
    text = presets.to_toml(preset)
    assert "[[rig.links]]" in text and "gb_per_s" not in text  # derived, not stored
    read = presets.from_toml(text, path=Path(f"{key}.toml"), expected=key)
    assert read.rig.links == LINKS and read.entries == (entry,)
    bare = presets.to_toml(dataclasses.replace(preset, rig=rig))
    assert "links" not in bare  # a preset without figures reads as those before them
    assert presets.from_toml(bare, path=Path("x.toml")).rig.links == ()


def test_a_malformed_link_is_damage(config_dir: Path) -> None:
    key, rig, entry = user_rig()
    path = presets.save(key, dataclasses.replace(rig, links=LINKS), entry)
    path.write_text(path.read_text().replace('op = "all_to_all"', 'op = "broadcast"'))
    with pytest.raises(UsageError, match="damaged"):
        presets.load(key)


def test_doctors_links_are_saved_beside_tunes_entries(config_dir: Path) -> None:
    key, rig, entry = user_rig()
    path = save_links(key, rig, LINKS[:1])  # no preset yet: one with no entry
    loaded = presets.load(key)
    assert loaded is not None and loaded.rig.links == LINKS[:1] and loaded.entries == ()
    presets.save(key, rig, entry)  # tune --save keeps doctor's figures
    faster = dataclasses.replace(LINKS[0], seconds=0.002)
    assert save_links(key, rig, (faster, LINKS[1])) == path  # and doctor keeps tune's entries
    loaded = presets.load(key)
    assert loaded is not None and loaded.find(USER) == entry
    assert loaded.rig.links == (faster, LINKS[1])  # the same collective and size: replaced
    assert not path.with_suffix(".toml.partial").exists()


def test_links_are_never_saved_over_a_file_that_cannot_be_read(config_dir: Path) -> None:
    key, rig, _ = user_rig()
    path = presets.preset_path(key)
    path.parent.mkdir(parents=True)
    path.write_text("][")
    with pytest.raises(UsageError, match="will not overwrite") as refused:
        save_links(key, rig, LINKS)
    assert "not valid TOML" in refused.value.why and path.read_text() == "]["
