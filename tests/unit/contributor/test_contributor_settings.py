"""Settings: declared once, validated, stored privately and atomically, documented."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
from pathlib import Path

import pytest

from app.contributor import settings as settings_module
from app.contributor.schedule import WeeklySchedule
from app.contributor.settings import (
    PROFILE_FIELDS,
    PROFILE_NAMES,
    SETTINGS,
    Profile,
    Settings,
    SettingsError,
    atomic_write_private,
    config_dir,
    default_settings,
    load_settings,
    save_settings,
    settings_document,
    settings_markdown,
    settings_path,
)

DOCS = Path(__file__).resolve().parents[3] / "docs" / "settings.md"


def test_every_setting_is_declared_once_and_typed() -> None:
    names = [spec.name for spec in SETTINGS]
    assert len(names) == len(set(names))
    profile_fields = {f.name for f in dataclasses.fields(Profile)}
    assert profile_fields == {field for field, *_ in PROFILE_FIELDS}
    top_fields = {f.name for f in dataclasses.fields(Settings)} - set(PROFILE_NAMES)
    expected = {f"{p}.{f}" for p in PROFILE_NAMES for f in profile_fields} | top_fields
    assert set(names) == expected
    for spec in SETTINGS:
        assert spec.help.strip(), spec.name
        assert spec.check(spec.default_value()) is None, spec.name


def test_defaults_are_modest() -> None:
    s = default_settings()
    assert (s.in_use.cpu_cores, s.in_use.cpu_percent, s.in_use.gpu_enabled) == (1, 50, False)
    assert s.idle.cpu_cores == max(1, (os.cpu_count() or 1) - 1)
    assert s.idle.cpu_percent == 100 and not s.idle.gpu_enabled
    assert not s.run_on_battery and s.checkpoint_interval_s == 60
    assert s.upload_kbps_cap == 0 and s.schedule.all_allowed
    assert s.other_cpu_resume_percent < s.other_cpu_suspend_percent


def test_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    s = default_settings().updated(
        {
            "in_use.cpu_cores": 2,
            "idle.gpu_enabled": True,
            "idle.gpu_memory_fraction": 1,
            "schedule": WeeklySchedule.always().with_hour(6, 23, False),
            "cpu_temp_limit_c": None,
            "gpu_temp_limit_c": 80,
            "run_on_battery": True,
        }
    )
    save_settings(s, path)
    loaded = load_settings(path)
    assert loaded == s
    assert loaded.idle.gpu_memory_fraction == 1.0
    assert isinstance(loaded.gpu_temp_limit_c, float)
    assert not loaded.schedule.hour_allowed(6, 23)


def test_file_is_sorted_indented_json(tmp_path: Path) -> None:
    path = save_settings(default_settings(), tmp_path / "settings.json")
    text = path.read_text()
    data = json.loads(text)
    assert text == json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    assert set(data["in_use"]) == {f for f, *_ in PROFILE_FIELDS}
    assert data["schedule"] == ["1" * 24] * 7


def test_file_mode_is_0600_and_no_temp_files_left(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "settings.json"
    save_settings(default_settings(), path)
    save_settings(default_settings().updated({"notifications": False}), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(path.parent) == ["settings.json"]


def test_atomic_write_failure_leaves_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "settings.json"
    save_settings(default_settings(), path)
    before = path.read_text()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(settings_module.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        save_settings(default_settings().updated({"in_use.cpu_cores": 3}), path)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["settings.json"]


def test_atomic_write_private_tightens_existing_mode(tmp_path: Path) -> None:
    path = tmp_path / "x.json"
    path.write_text("old")
    path.chmod(0o644)
    atomic_write_private(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_missing_file_gives_defaults(tmp_path: Path) -> None:
    assert load_settings(tmp_path / "nope.json") == default_settings()


def test_missing_keys_take_defaults(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"in_use": {"cpu_percent": 20}, "notifications": False}))
    loaded = load_settings(path)
    assert loaded.in_use.cpu_percent == 20
    assert loaded.in_use.cpu_cores == default_settings().in_use.cpu_cores
    assert loaded.notifications is False


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2]", "\udcff"])
def test_corrupt_file_names_path_and_fix(tmp_path: Path, text: str) -> None:
    path = tmp_path / "settings.json"
    path.write_text(text, errors="surrogateescape")
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    message = str(info.value)
    assert str(path) in message
    assert "delete" in message


def test_unknown_key_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"run_on_batery": True}))
    with pytest.raises(SettingsError, match=r"'run_on_batery'") as info:
        load_settings(path)
    assert str(path) in str(info.value)
    path.write_text(json.dumps({"idle": {"cpu_cors": 2}}))
    with pytest.raises(SettingsError, match=r"'idle.cpu_cors'"):
        load_settings(path)


BAD_VALUES = [
    ("in_use.cpu_cores", 0),
    ("in_use.cpu_cores", 1.5),
    ("in_use.cpu_cores", True),
    ("idle.cpu_cores", "4"),
    ("in_use.cpu_percent", 0),
    ("idle.cpu_percent", 101),
    ("in_use.gpu_enabled", 1),
    ("idle.gpu_enabled", "true"),
    ("in_use.memory_cap_mb", 64.0),
    ("idle.gpu_memory_fraction", 0.01),
    ("idle.gpu_memory_fraction", 1.5),
    ("in_use.gpu_memory_fraction", "half"),
    ("idle.gpu_percent", 0),
    ("in_use.gpu_percent", 200),
    ("idle.memory_cap_mb", 10),
    ("schedule", ["1" * 24] * 6),
    ("schedule", ["1" * 23] + ["1" * 24] * 6),
    ("schedule", ["x" * 24] * 7),
    ("schedule", "1" * 168),
    ("run_on_battery", "no"),
    ("idle_minutes_before_start", -1),
    ("other_cpu_suspend_percent", 0),
    ("other_cpu_suspend_percent", 101),
    ("other_cpu_resume_percent", -5),
    ("cpu_temp_limit_c", 10),
    ("gpu_temp_limit_c", 500.0),
    ("cpu_temp_limit_c", "hot"),
    ("cpu_tdp_watts", 0),
    ("cpu_tdp_watts", None),
    ("cpu_tdp_watts", 5000.0),
    ("upload_kbps_cap", -1),
    ("cache_size_mb", 1),
    ("checkpoint_interval_s", 0),
    ("checkpoint_interval_s", None),
    ("notifications", None),
    ("start_at_login", "yes"),
]


@pytest.mark.parametrize(("name", "value"), BAD_VALUES)
def test_each_bad_value_is_rejected_naming_the_setting(name: str, value: object) -> None:
    with pytest.raises(SettingsError) as info:
        default_settings().updated({name: value})
    assert repr(name) in str(info.value)
    assert repr(value)[:20] in str(info.value)


def test_every_setting_has_a_bad_value_test() -> None:
    assert {spec.name for spec in SETTINGS} == {name for name, _ in BAD_VALUES}


@pytest.mark.parametrize(("name", "value"), BAD_VALUES[:5])
def test_bad_value_in_file_names_setting_and_path(tmp_path: Path, name: str, value: object) -> None:
    data = default_settings().to_dict()
    head, _, tail = name.partition(".")
    if tail:
        data[head][tail] = value
    else:
        data[head] = value
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SettingsError) as info:
        load_settings(path)
    assert repr(name) in str(info.value) and str(path) in str(info.value)


def test_resume_must_be_below_suspend() -> None:
    with pytest.raises(SettingsError, match="other_cpu_resume_percent"):
        default_settings().updated(
            {"other_cpu_suspend_percent": 40, "other_cpu_resume_percent": 40}
        )
    ok = default_settings().updated(
        {"other_cpu_suspend_percent": 40, "other_cpu_resume_percent": 39}
    )
    assert ok.other_cpu_resume_percent == 39


def test_update_is_validated_and_unknown_rejected() -> None:
    with pytest.raises(SettingsError, match="unknown setting 'bogus'"):
        default_settings().updated({"bogus": 1})
    s = default_settings().updated({"in_use.cpu_percent": 30})
    assert s.in_use.cpu_percent == 30 and s.get("in_use.cpu_percent") == 30
    assert default_settings().in_use.cpu_percent == 50  # frozen: the original is unchanged


def test_settings_error_is_a_value_error() -> None:
    assert issubclass(SettingsError, ValueError)


def test_config_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BARNRAISE_CONFIG_DIR", str(tmp_path))
    assert config_dir() == tmp_path
    assert settings_path() == tmp_path / "settings.json"
    save_settings(default_settings())
    assert (tmp_path / "settings.json").exists()
    monkeypatch.delenv("BARNRAISE_CONFIG_DIR")
    assert config_dir().name == "barnraise"


def test_markdown_table_lists_every_setting() -> None:
    table = settings_markdown()
    rows = table.strip().splitlines()
    assert rows[0].startswith("| setting | type | default |")
    assert len(rows) == 2 + len(SETTINGS)
    for spec in SETTINGS:
        assert f"| `{spec.name}` |" in table


def test_docs_settings_md_is_current() -> None:
    """Regenerate with: python -m app.contributor.settings > docs/settings.md"""
    text = DOCS.read_text(encoding="utf-8")
    for spec in SETTINGS:
        assert f"`{spec.name}`" in text, f"{spec.name} missing from {DOCS}"
    assert text == settings_document(), f"{DOCS} is stale; regenerate it"
